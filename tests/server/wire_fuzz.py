"""Feed the C request decoder hostile bytes; run by test_wire_sanitized.py in a process where
the decoder was built with AddressSanitizer, so any read or write outside a buffer aborts.

    python tests/server/wire_fuzz.py <path of the sanitized _wire module> <inputs> <seed>

Inputs: random mutations (flips, insertions, deletions, cuts, splices) of real requests and
batches, and random bytes; each decoded request's or batch's Requests are built too
(plain_request, batch_requests). Prints how many inputs were decoded, how many left to
protobuf, how many built.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import random
import sys

from pdp.policy import Action, Request, Resource, Subject
from pdp_client._proto import authorization_pb2 as pb


def _seeds() -> list[bytes]:
    single = pb.AuthorizeRequest(service_token="t", explain=True, min_bundle_sequence=2**63)
    single.subject.type, single.subject.id = "user", "alice"
    single.subject.properties.update({"teams": ["a", "b"], "level": 3, "x": {"y": [None, True]}})
    single.action.name = "read"
    single.resource.type, single.resource.id = "doc", "d" * 200
    single.resource.properties.update({"owner": "é", "size": 1.5})
    single.context.update({"source": {"ip": "10.0.0.1"}})
    batch = pb.AuthorizeBatchRequest()
    batch.defaults.CopyFrom(single)
    for i in range(4):
        batch.requests.add().resource.id = f"r{i}"
    # A context whose number value ends 4 bytes short, at the very end of the input.
    cut_double = b"\x22\x0c\x0a\x0a\x0a\x01n\x12\x05\x11\x00\x00\x00\x00"
    return [single.SerializeToString(), batch.SerializeToString(), b"", cut_double]


def _mutate(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and at < len(out):
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at:at] = bytes([rng.choice((0x00, 0x7F, 0x80, 0xFF, rng.randrange(256)))])
        elif kind == 2 and at < len(out):
            del out[at:at + rng.randint(1, 8)]
        elif kind == 3:
            del out[at:]
        else:
            other = rng.choice(seeds)
            start = rng.randrange(len(other) + 1)
            out[at:at] = other[start:start + rng.randint(1, 32)]
    return bytes(out)


def main(path: str, count: int, seed: int) -> int:
    loader = importlib.machinery.ExtensionFileLoader("pdp.server._wire", path)
    spec = importlib.util.spec_from_loader("pdp.server._wire", loader)
    assert spec is not None
    wire = importlib.util.module_from_spec(spec)
    loader.exec_module(wire)
    rng = random.Random(seed)
    seeds = _seeds()
    # Every decoded request and batch becomes Requests, as the server's do.
    wire.request_types(Subject, ("type", "id", "properties"), Action, ("name", "properties"),
                       Resource, ("type", "id", "properties"), Request,
                       ("subject", "action", "resource", "context", "peer_ip"))
    subject, action = Subject("user", "alice"), Action("read")
    decoded = left = built = 0
    for i in range(count):
        if i < len(seeds):
            data = seeds[i]  # each seed once as it is
        elif i % 10 == 0:
            data = rng.randbytes(rng.randrange(48))
        else:
            data = _mutate(rng.choice(seeds), rng, seeds)
        for decode in (wire.decode_request, wire.decode_batch):
            if (reading := decode(data)) is None:
                left += 1
                continue
            decoded += 1
            if decode is wire.decode_batch:
                made = wire.batch_requests(reading[1], subject, action, {}, {}, "10.0.0.1",
                                           1024)
            else:
                made = wire.plain_request(reading, {}, "10.0.0.1", 1024)
            built += made is not None
    print(f"decoded {decoded}, left to protobuf {left}, built {built}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
