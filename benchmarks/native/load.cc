// A native load generator: unary gRPC calls over mTLS with N in flight, for benchmarks/native.py.
//
// It sends the request bytes it is given (a serialized message, built by the Python side with
// the project's own protobuf classes), so it knows no .proto: grpc::GenericStub, raw bytes.
// Every occurrence of the marker in those bytes is replaced, call by call, by a counter of the
// same width, so that every call asks about new resources (the digits keep every length, so
// the bytes stay a valid message). Each answer is checked (--check): a pdp answer must be an
// ALLOW (a batch: one ALLOW per item), a Cerbos answer must allow every action of every
// resource; anything else counts as a failed call.
//
// Protocol with the harness: connect and warm up, print "ready", wait for a line on stdin,
// run --duration seconds (then let the calls in flight finish), print one JSON line, exit.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string target, ca, cert, key, server_name = "localhost", method, request, check = "ok";
  std::string marker;
  int inflight = 1, channels = 1, items = 1;
  double duration = 1.0;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string name = argv[i];
    if (i + 1 >= argc) throw std::runtime_error("missing value for " + name);
    std::string value = argv[++i];
    if (name == "--target") o.target = value;
    else if (name == "--ca") o.ca = value;
    else if (name == "--cert") o.cert = value;
    else if (name == "--key") o.key = value;
    else if (name == "--server-name") o.server_name = value;
    else if (name == "--method") o.method = value;
    else if (name == "--request") o.request = value;
    else if (name == "--marker") o.marker = value;
    else if (name == "--check") o.check = value;
    else if (name == "--inflight") o.inflight = std::stoi(value);
    else if (name == "--channels") o.channels = std::stoi(value);
    else if (name == "--items") o.items = std::stoi(value);
    else if (name == "--duration") o.duration = std::stod(value);
    else throw std::runtime_error("unknown option " + name);
  }
  if (o.target.empty() || o.method.empty() || o.request.empty() || o.ca.empty() ||
      o.cert.empty() || o.key.empty())
    throw std::runtime_error("--target, --method, --request, --ca, --cert and --key are required");
  if (o.inflight < 1 || o.channels < 1 || o.items < 1 || !(o.duration > 0))
    throw std::runtime_error("--inflight, --channels, --items and --duration must be positive");
  if (o.check != "ok" && o.check != "pdp" && o.check != "pdp-batch" && o.check != "cerbos")
    throw std::runtime_error("--check is one of ok, pdp, pdp-batch, cerbos");
  return o;
}

// --- reading answers: just enough of the protobuf wire format ---------------------------------

struct Reader {
  const uint8_t* p;
  const uint8_t* end;
  bool ok = true;

  bool done() const { return !ok || p >= end; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) break;
      uint8_t b = *p++;
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    ok = false;
    return 0;
  }
  // The next field: its number and wire type; a length-delimited field's bytes in sub.
  bool field(uint32_t* number, uint32_t* type, Reader* sub, uint64_t* value) {
    uint64_t tag = varint();
    if (!ok) return false;
    *number = uint32_t(tag >> 3);
    *type = uint32_t(tag & 7);
    switch (*type) {
      case 0: *value = varint(); return ok;
      case 1: if (end - p < 8) return ok = false; p += 8; return true;
      case 5: if (end - p < 4) return ok = false; p += 4; return true;
      case 2: {
        uint64_t n = varint();
        if (!ok || uint64_t(end - p) < n) return ok = false;
        *sub = Reader{p, p + n};
        p += n;
        return true;
      }
      default: return ok = false;
    }
  }
};

// An AuthorizeResponse whose decision (field 1) is DECISION_ALLOW (1).
bool pdp_allow(Reader r) {
  uint64_t decision = 0;
  uint32_t number, type;
  uint64_t value;
  Reader sub{nullptr, nullptr};
  while (!r.done()) {
    if (!r.field(&number, &type, &sub, &value)) return false;
    if (number == 1 && type == 0) decision = value;
  }
  return r.ok && decision == 1;
}

// An AuthorizeBatchResponse of exactly `items` responses (field 1), each an ALLOW.
bool pdp_batch_allow(Reader r, int items) {
  int seen = 0;
  uint32_t number, type;
  uint64_t value;
  Reader sub{nullptr, nullptr};
  while (!r.done()) {
    if (!r.field(&number, &type, &sub, &value)) return false;
    if (number == 1 && type == 2) {
      if (!pdp_allow(sub)) return false;
      ++seen;
    }
  }
  return r.ok && seen == items;
}

// A CheckResourcesResponse whose results (field 2: one per resource asked about) each hold an
// `actions` map (field 2: entries of key 1, value 2) of at least one action, every one
// EFFECT_ALLOW (1), `items` actions in all (one resource with 3 actions, or 100 with 1).
bool cerbos_allow(Reader r, int items) {
  int results = 0, actions = 0;
  uint32_t number, type;
  uint64_t value;
  Reader result{nullptr, nullptr};
  while (!r.done()) {
    if (!r.field(&number, &type, &result, &value)) return false;
    if (number != 2 || type != 2) continue;
    ++results;
    const int before = actions;  // this result's actions are counted from here
    Reader entry{nullptr, nullptr};
    while (!result.done()) {
      if (!result.field(&number, &type, &entry, &value)) return false;
      if (number != 2 || type != 2) continue;
      uint64_t effect = 0;
      Reader unused{nullptr, nullptr};
      while (!entry.done()) {
        if (!entry.field(&number, &type, &unused, &value)) return false;
        if (number == 2 && type == 0) effect = value;
      }
      if (!entry.ok || effect != 1) return false;
      ++actions;
    }
    if (!result.ok || actions == before) return false;
  }
  return r.ok && results > 0 && actions == items;
}

// --- the calls ----------------------------------------------------------------------------------

struct Call {
  grpc::ClientContext context;
  grpc::ByteBuffer answer;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  Clock::time_point started;
};

class Load {
 public:
  explicit Load(const Options& o) : o_(o), template_(read_file(o.request)) {
    if (!o.marker.empty()) {
      for (size_t at = template_.find(o.marker); at != std::string::npos;
           at = template_.find(o.marker, at + o.marker.size()))
        marks_.push_back(at);
    }
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = read_file(o.ca);
    ssl.pem_cert_chain = read_file(o.cert);
    ssl.pem_private_key = read_file(o.key);
    auto creds = grpc::SslCredentials(ssl);
    for (int i = 0; i < o.channels; ++i) {
      grpc::ChannelArguments args;
      args.SetSslTargetNameOverride(o.server_name);
      args.SetInt("bench.channel", i);  // distinct arguments: a connection of its own
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      args.SetMaxReceiveMessageSize(64 << 20);
      stubs_.emplace_back(new grpc::GenericStub(grpc::CreateCustomChannel(o.target, creds, args)));
    }
  }

  ~Load() {
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) delete static_cast<Call*>(tag);
  }

  // Warm-up: three calls on each channel, one at a time; throws when one fails.
  void warm_up() {
    for (int round = 0; round < 3; ++round) {
      for (size_t i = 0; i < stubs_.size(); ++i) {
        start(i);
        void* tag;
        bool ok;
        if (!cq_.Next(&tag, &ok)) throw std::runtime_error("completion queue shut down");
        std::unique_ptr<Call> call(static_cast<Call*>(tag));
        std::string error;
        if (!finish(*call, ok, &error)) throw std::runtime_error("warm-up call failed: " + error);
      }
    }
  }

  std::string run() {
    rusage before{}, after{};
    getrusage(RUSAGE_SELF, &before);
    const auto started = Clock::now();
    const auto stop_at = started + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(o_.duration));
    int outstanding = 0;
    for (int i = 0; i < o_.inflight; ++i, ++outstanding) start(size_t(i) % stubs_.size());
    long calls = 0, errors = 0;
    std::string first_error;
    std::vector<double> latencies;
    latencies.reserve(1 << 16);
    size_t next_channel = 0;
    while (outstanding > 0) {
      void* tag;
      bool ok;
      if (!cq_.Next(&tag, &ok)) break;
      std::unique_ptr<Call> call(static_cast<Call*>(tag));
      const auto now = Clock::now();
      std::string error;
      if (!finish(*call, ok, &error)) {
        ++errors;
        if (first_error.empty()) first_error = error;
      }
      ++calls;
      latencies.push_back(std::chrono::duration<double, std::milli>(now - call->started).count());
      --outstanding;
      if (now < stop_at) {
        start(next_channel++ % stubs_.size());
        ++outstanding;
      }
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();
    getrusage(RUSAGE_SELF, &after);
    const double cpu = seconds(after.ru_utime) - seconds(before.ru_utime) +
                       seconds(after.ru_stime) - seconds(before.ru_stime);
    std::sort(latencies.begin(), latencies.end());
    std::ostringstream out;
    out.precision(6);
    out << std::fixed << "{\"calls\":" << calls << ",\"errors\":" << errors
        << ",\"decisions\":" << (calls - errors) * o_.items << ",\"elapsed\":" << elapsed
        << ",\"cpu\":" << cpu << ",\"p50_ms\":" << percentile(latencies, 50)
        << ",\"p99_ms\":" << percentile(latencies, 99)
        << ",\"max_ms\":" << percentile(latencies, 100) << ",\"first_error\":\""
        << escape(first_error) << "\"}";
    return out.str();
  }

 private:
  static double seconds(const timeval& t) { return double(t.tv_sec) + double(t.tv_usec) / 1e6; }

  static double percentile(const std::vector<double>& sorted, double p) {
    if (sorted.empty()) return 0.0;
    size_t i = size_t(p / 100.0 * double(sorted.size() - 1) + 0.5);
    return sorted[std::min(i, sorted.size() - 1)];
  }

  // The first 300 bytes of s as the inside of a JSON string, in ASCII: a control character is
  // left out, any other byte outside ASCII shows as '?' (no character is cut in two).
  static std::string escape(const std::string& s) {
    std::string out;
    for (char c : s.substr(0, 300)) {
      const auto byte = static_cast<unsigned char>(c);
      if (byte < 0x20) continue;
      if (byte >= 0x80) c = '?';
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    return out;
  }

  // The next request: the template with every marker replaced by the counter's digits.
  std::string next_request() {
    std::string bytes = template_;
    const size_t width = o_.marker.size();
    for (size_t k = 0; k < marks_.size(); ++k) {
      uint64_t n = counter_ * marks_.size() + k;
      for (size_t d = 0; d < width; ++d) {
        bytes[marks_[k] + width - 1 - d] = char('0' + n % 10);
        n /= 10;
      }
    }
    ++counter_;
    return bytes;
  }

  void start(size_t channel) {
    auto* call = new Call;
    call->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const std::string bytes = next_request();
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    call->started = Clock::now();
    call->reader = stubs_[channel]->PrepareUnaryCall(&call->context, o_.method, request, &cq_);
    call->reader->StartCall();
    call->reader->Finish(&call->answer, &call->status, call);
  }

  bool finish(Call& call, bool ok, std::string* error) {
    if (!ok) {
      *error = "the call did not complete";
      return false;
    }
    if (!call.status.ok()) {
      *error = "status " + std::to_string(call.status.error_code()) + ": " +
               call.status.error_message();
      return false;
    }
    if (o_.check == "ok") return true;
    std::vector<grpc::Slice> slices;
    if (!call.answer.Dump(&slices).ok()) {
      *error = "unreadable answer";
      return false;
    }
    std::string bytes;
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    Reader r{reinterpret_cast<const uint8_t*>(bytes.data()),
             reinterpret_cast<const uint8_t*>(bytes.data()) + bytes.size()};
    bool allowed = o_.check == "pdp" ? pdp_allow(r)
                   : o_.check == "pdp-batch" ? pdp_batch_allow(r, o_.items)
                                             : cerbos_allow(r, o_.items);
    if (!allowed) *error = "an answer that is not ALLOW for every decision";
    return allowed;
  }

  const Options o_;
  const std::string template_;
  std::vector<size_t> marks_;
  uint64_t counter_ = 0;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;
  grpc::CompletionQueue cq_;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    Options o = parse(argc, argv);
    Load load(o);
    load.warm_up();
    std::cout << "ready" << std::endl;
    std::string line;
    if (!std::getline(std::cin, line)) return 0;  // the harness went away: nothing to do
    std::cout << load.run() << std::endl;
    return 0;
  } catch (const std::exception& exc) {
    std::cerr << "native-load: " << exc.what() << std::endl;
    return 2;
  }
}
