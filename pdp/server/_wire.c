/*
 * pdp.server._wire: AuthorizeRequest and AuthorizeBatchRequest wire bytes straight into
 * Python values, for the decision hot path; and its answers back into wire bytes
 * (encode_answers, at the end of this file).
 *
 * Parsing with protobuf (upb) is fast, but reading the parsed message from Python is not:
 * every field read builds a wrapper object, and turning a request into the engine's
 * Request cost ~11 us warm, ten times the parse. This reads the same bytes once, in C.
 *
 * It takes only the shapes a well-behaved client sends: the fields of pdp.v1 (no unknown
 * field numbers), each field of a message at most once, Struct values nested at most
 * MAX_DEPTH levels, valid UTF-8. For anything else it answers None ("not decoded here")
 * and the caller parses the bytes with protobuf, which decides and reports exactly as it
 * always has. So this never accepts bytes that protobuf refuses, and never reads them
 * differently: tests/server/test_wire.py holds both against each other, on generated
 * messages and on random mutations of their bytes.
 *
 * Every read is bounds-checked against the end of its enclosing message; lengths are
 * checked before use; no recursion goes deeper than MAX_DEPTH (C stack) and no field
 * is read twice.
 *
 * Results (None means "use protobuf"):
 *   decode_request(b) -> (subject, action, resource, context, service_token, explain,
 *                         min_bundle_sequence)
 *     subject, resource: None (absent) or (type, id, properties)
 *     action:            None (absent) or (name, properties)
 *     properties, context: None (absent) or dict (a google.protobuf.Struct as
 *                          str/float/bool/None/list/dict, as pdp.server.convert reads it)
 *   decode_batch(b) -> (defaults, [request, ...]), defaults None or as decode_request
 *
 * plain_request and batch_requests (below) turn decoded requests into the engine's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_slotted.h"
#include <stdint.h>
#include <string.h>

/* Struct nesting (dicts and lists inside a properties or context value). Each level is
 * three protobuf message levels (Struct, map entry, Value); protobuf's own limit is 100
 * message levels, so anything this accepts protobuf also parses. */
#define MAX_DEPTH 16

/* Wire types and the tags used below: (field << 3) | wire type. */
#define VARINT 0
#define I64 1
#define LEN 2
#define TAG(field, wire) (((field) << 3) | (wire))

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Reader;

/* Each function below returns NULL for "not decoded here" with no exception set, or
 * NULL with an exception set for a real failure (out of memory): the caller tells them
 * apart with PyErr_Occurred(). */

static int read_varint(Reader *r, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end)
            return -1;
        uint8_t b = *r->p++;
        if (shift == 63 && b > 1)
            return -1; /* more than 64 bits */
        v |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* A length-delimited field's contents as a sub-reader; the reader moves past it. */
static int read_len(Reader *r, Reader *sub) {
    uint64_t n;
    if (read_varint(r, &n) < 0 || n > (uint64_t)(r->end - r->p))
        return -1;
    sub->p = r->p;
    sub->end = r->p + n;
    r->p += n;
    return 0;
}

static PyObject *read_str(Reader *r) {
    Reader s;
    if (read_len(r, &s) < 0)
        return NULL;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)s.p, s.end - s.p, "strict");
    if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear(); /* not UTF-8: protobuf refuses it and says so */
    return text;
}

static PyObject *struct_of(Reader *r, int depth);
static PyObject *list_of(Reader *r, int depth);

/* google.protobuf.Value: at most one of its fields; none set reads as None. */
static PyObject *value_of(Reader *r, int depth) {
    if (r->p >= r->end)
        Py_RETURN_NONE;
    uint64_t tag, v;
    Reader sub;
    PyObject *out;
    if (read_varint(r, &tag) < 0)
        return NULL;
    switch (tag) {
    case TAG(1, VARINT): /* null_value */
        if (read_varint(r, &v) < 0)
            return NULL;
        out = Py_NewRef(Py_None);
        break;
    case TAG(2, I64): { /* number_value */
        char bytes[8];
        if (r->end - r->p < 8)
            return NULL;
        memcpy(bytes, r->p, 8); /* a copy here, so a sanitizer build checks this read too */
        r->p += 8;
        double number = PyFloat_Unpack8(bytes, 1);
        if (number == -1.0 && PyErr_Occurred()) /* only where doubles are not IEEE 754 */
            return NULL;
        out = PyFloat_FromDouble(number);
        break;
    }
    case TAG(3, LEN): /* string_value */
        out = read_str(r);
        break;
    case TAG(4, VARINT): /* bool_value */
        if (read_varint(r, &v) < 0)
            return NULL;
        out = PyBool_FromLong(v != 0);
        break;
    case TAG(5, LEN): /* struct_value */
        out = read_len(r, &sub) < 0 ? NULL : struct_of(&sub, depth + 1);
        break;
    case TAG(6, LEN): /* list_value */
        out = read_len(r, &sub) < 0 ? NULL : list_of(&sub, depth + 1);
        break;
    default:
        return NULL;
    }
    if (out != NULL && r->p != r->end) { /* a second field: protobuf decides */
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* google.protobuf.Struct: map<string, Value> fields = 1, as a dict. */
static PyObject *struct_of(Reader *r, int depth) {
    if (depth > MAX_DEPTH)
        return NULL;
    PyObject *dict = PyDict_New();
    if (dict == NULL)
        return NULL;
    while (r->p < r->end) {
        uint64_t tag;
        Reader entry;
        if (read_varint(r, &tag) < 0 || tag != TAG(1, LEN) || read_len(r, &entry) < 0)
            goto fail;
        PyObject *key = NULL, *value = NULL;
        while (entry.p < entry.end) {
            if (read_varint(&entry, &tag) < 0)
                goto entry_fail;
            if (tag == TAG(1, LEN) && key == NULL) {
                if ((key = read_str(&entry)) == NULL)
                    goto entry_fail;
            } else if (tag == TAG(2, LEN) && value == NULL) {
                Reader sub;
                if (read_len(&entry, &sub) < 0 || (value = value_of(&sub, depth)) == NULL)
                    goto entry_fail;
            } else {
                goto entry_fail;
            }
        }
        if (key == NULL && (key = PyUnicode_FromStringAndSize("", 0)) == NULL)
            goto entry_fail;
        if (value == NULL)
            value = Py_NewRef(Py_None);
        /* A key met again replaces the earlier entry, as protobuf's map does. */
        if (PyDict_SetItem(dict, key, value) < 0)
            goto entry_fail;
        Py_DECREF(key);
        Py_DECREF(value);
        continue;
    entry_fail:
        Py_XDECREF(key);
        Py_XDECREF(value);
        goto fail;
    }
    return dict;
fail:
    Py_DECREF(dict);
    return NULL;
}

/* google.protobuf.ListValue: repeated Value values = 1, as a list. */
static PyObject *list_of(Reader *r, int depth) {
    if (depth > MAX_DEPTH)
        return NULL;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    while (r->p < r->end) {
        uint64_t tag;
        Reader sub;
        if (read_varint(r, &tag) < 0 || tag != TAG(1, LEN) || read_len(r, &sub) < 0)
            goto fail;
        PyObject *item = value_of(&sub, depth);
        if (item == NULL)
            goto fail;
        int failed = PyList_Append(list, item);
        Py_DECREF(item);
        if (failed)
            goto fail;
    }
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}

/* Subject and Resource (type = 1, id = 2, properties = 3), or Action (name = 1,
 * properties = 2, so texts = 1): a tuple of the texts ("" when unset) and the
 * properties (None when unset). */
static PyObject *entity_of(Reader *r, int texts) {
    PyObject *fields[3] = {NULL, NULL, NULL};
    uint64_t props = (uint64_t)texts + 1;
    while (r->p < r->end) {
        uint64_t tag, field;
        if (read_varint(r, &tag) < 0 || (tag & 7) != LEN)
            goto fail;
        field = tag >> 3;
        if (field < 1 || field > props || fields[field - 1] != NULL)
            goto fail;
        if (field == props) {
            Reader sub;
            if (read_len(r, &sub) < 0 || (fields[field - 1] = struct_of(&sub, 1)) == NULL)
                goto fail;
        } else if ((fields[field - 1] = read_str(r)) == NULL) {
            goto fail;
        }
    }
    PyObject *out = PyTuple_New(texts + 1);
    if (out == NULL)
        goto fail;
    for (int i = 0; i <= texts; i++) {
        PyObject *item = fields[i];
        if (item == NULL) {
            item = i < texts ? PyUnicode_FromStringAndSize("", 0) : Py_NewRef(Py_None);
            if (item == NULL) {
                for (int j = i + 1; j <= texts; j++)
                    Py_XDECREF(fields[j]);
                Py_DECREF(out);
                return NULL;
            }
        }
        PyTuple_SET_ITEM(out, i, item); /* steals the reference */
    }
    return out;
fail:
    for (int i = 0; i < 3; i++)
        Py_XDECREF(fields[i]);
    return NULL;
}

/* AuthorizeRequest: subject = 1, action = 2, resource = 3, context = 4 (Struct),
 * service_token = 5, explain = 6 (bool), min_bundle_sequence = 7 (uint64). */
static PyObject *request_of(Reader *r) {
    PyObject *fields[5] = {NULL, NULL, NULL, NULL, NULL};
    int seen = 0;
    uint64_t explain = 0, sequence = 0;
    while (r->p < r->end) {
        uint64_t tag, field;
        Reader sub;
        if (read_varint(r, &tag) < 0)
            goto fail;
        field = tag >> 3;
        if (field < 1 || field > 7 || (seen & (1 << field)))
            goto fail;
        seen |= 1 << field;
        switch (tag) {
        case TAG(1, LEN):
            fields[0] = read_len(r, &sub) < 0 ? NULL : entity_of(&sub, 2);
            break;
        case TAG(2, LEN):
            fields[1] = read_len(r, &sub) < 0 ? NULL : entity_of(&sub, 1);
            break;
        case TAG(3, LEN):
            fields[2] = read_len(r, &sub) < 0 ? NULL : entity_of(&sub, 2);
            break;
        case TAG(4, LEN):
            fields[3] = read_len(r, &sub) < 0 ? NULL : struct_of(&sub, 1);
            break;
        case TAG(5, LEN):
            fields[4] = read_str(r);
            break;
        case TAG(6, VARINT):
            if (read_varint(r, &explain) < 0)
                goto fail;
            continue;
        case TAG(7, VARINT):
            if (read_varint(r, &sequence) < 0)
                goto fail;
            continue;
        default: /* a known field with another wire type */
            goto fail;
        }
        if (fields[field - 1] == NULL)
            goto fail;
    }
    PyObject *out = PyTuple_New(7);
    if (out == NULL)
        goto fail;
    for (int i = 0; i < 5; i++) {
        PyObject *item = fields[i];
        if (item == NULL)
            item = i < 4 ? Py_NewRef(Py_None) : PyUnicode_FromStringAndSize("", 0);
        fields[i] = NULL;
        if (item == NULL) {
            for (int j = i + 1; j < 5; j++)
                Py_XDECREF(fields[j]);
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    PyTuple_SET_ITEM(out, 5, PyBool_FromLong(explain != 0));
    PyObject *number = PyLong_FromUnsignedLongLong(sequence);
    if (number == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 6, number);
    return out;
fail:
    for (int i = 0; i < 5; i++)
        Py_XDECREF(fields[i]);
    return NULL;
}

/* NULL with an exception: raise it; NULL without: None, "parse it with protobuf". */
static PyObject *result(PyObject *out) {
    if (out != NULL || PyErr_Occurred())
        return out;
    Py_RETURN_NONE;
}

static PyObject *decode_request(PyObject *module, PyObject *arg) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Reader r = {(const uint8_t *)view.buf, (const uint8_t *)view.buf + view.len};
    PyObject *out = request_of(&r);
    PyBuffer_Release(&view);
    return result(out);
}

/* AuthorizeBatchRequest: defaults = 1, requests = 2 (repeated). */
static PyObject *decode_batch(PyObject *module, PyObject *arg) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Reader r = {(const uint8_t *)view.buf, (const uint8_t *)view.buf + view.len};
    PyObject *defaults = NULL, *out = NULL;
    PyObject *items = PyList_New(0);
    if (items == NULL)
        goto done;
    while (r.p < r.end) {
        uint64_t tag;
        Reader sub;
        if (read_varint(&r, &tag) < 0 || read_len(&r, &sub) < 0)
            goto done;
        if (tag == TAG(1, LEN) && defaults == NULL) {
            if ((defaults = request_of(&sub)) == NULL)
                goto done;
        } else if (tag == TAG(2, LEN)) {
            PyObject *item = request_of(&sub);
            if (item == NULL)
                goto done;
            int failed = PyList_Append(items, item);
            Py_DECREF(item);
            if (failed)
                goto done;
        } else {
            goto done;
        }
    }
    out = PyTuple_Pack(2, defaults != NULL ? defaults : Py_None, items);
done:
    PyBuffer_Release(&view);
    Py_XDECREF(defaults);
    Py_XDECREF(items);
    return result(out);
}

/* --- answers ------------------------------------------------------------------------------
 *
 * encode_answers(decisions, ids, entries, entry_of, framed) -> bytes
 *
 * The serialized AuthorizeResponse of each (decision, id), concatenated; with ``framed``,
 * each as field 1 of an AuthorizeBatchResponse (tag 0x0A and its length), so the whole is
 * that message. An answer is the bytes of its decision's fields 1-4 (``head``), the
 * decision id as field 5, and field 6 (``tail``: b"\x30\x01" when cached, else empty).
 * Head and tail are pdp.server.convert's: ``entries`` maps id(decision) to
 * (decision, head, tail), and ``entry_of(decision)`` makes (and keeps) a missing one. An
 * entry is used only when it holds this very decision object (it keeps it alive, so its
 * id cannot have been reused). The bytes are the generated message's: tests/server/
 * test_answer_encoding.py holds them to SerializeToString. */

static Py_ssize_t varint_size(uint64_t v) {
    Py_ssize_t n = 1;
    while (v > 0x7F) {
        v >>= 7;
        n++;
    }
    return n;
}

static char *put_varint(char *out, uint64_t v) {
    while (v > 0x7F) {
        *out++ = (char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    *out++ = (char)v;
    return out;
}

/* The (decision, head, tail) entry of ``decision``: a new reference, or NULL with an
 * exception set. */
static PyObject *entry_for(PyObject *decision, PyObject *entries, PyObject *entry_of) {
    PyObject *key = PyLong_FromVoidPtr(decision);
    if (key == NULL)
        return NULL;
    PyObject *entry = PyDict_GetItemWithError(entries, key); /* borrowed */
    Py_XINCREF(entry);
    Py_DECREF(key);
    if (entry == NULL && PyErr_Occurred())
        return NULL;
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3 ||
        PyTuple_GET_ITEM(entry, 0) != decision) {
        Py_XDECREF(entry);
        entry = PyObject_CallOneArg(entry_of, decision);
        if (entry == NULL)
            return NULL;
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3 ||
            PyTuple_GET_ITEM(entry, 0) != decision) {
            Py_DECREF(entry);
            PyErr_SetString(PyExc_TypeError, "entry_of must return (decision, head, tail)");
            return NULL;
        }
    }
    if (!PyBytes_CheckExact(PyTuple_GET_ITEM(entry, 1)) ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(entry, 2))) {
        Py_DECREF(entry);
        PyErr_SetString(PyExc_TypeError, "an entry's head and tail must be bytes");
        return NULL;
    }
    return entry;
}

static PyObject *encode_answers(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_answers(decisions, ids, entries, entry_of, framed)");
        return NULL;
    }
    PyObject *decisions = args[0], *ids = args[1], *entries = args[2], *entry_of = args[3];
    int framed = PyObject_IsTrue(args[4]);
    if (framed < 0)
        return NULL;
    if (!PyList_CheckExact(decisions) || !PyList_CheckExact(ids) ||
        PyList_GET_SIZE(decisions) != PyList_GET_SIZE(ids)) {
        PyErr_SetString(PyExc_TypeError, "decisions and ids must be lists of one length");
        return NULL;
    }
    if (!PyDict_CheckExact(entries) || !PyCallable_Check(entry_of)) {
        PyErr_SetString(PyExc_TypeError, "entries must be a dict and entry_of callable");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(decisions);
    /* The entries, held while the answers are written (entry_of may drop them from the
     * dict), and each id's UTF-8 (kept by its str, which the ids list holds). */
    PyObject *held = PyList_New(count);
    if (held == NULL)
        return NULL;
    const char **texts = PyMem_Malloc(sizeof(char *) * (size_t)(count ? count : 1));
    Py_ssize_t *sizes = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(count ? count : 1));
    PyObject *out = NULL;
    if (texts == NULL || sizes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *ident = PyList_GET_ITEM(ids, i);
        if (!PyUnicode_Check(ident)) {
            PyErr_SetString(PyExc_TypeError, "ids must be str");
            goto done;
        }
        if ((texts[i] = PyUnicode_AsUTF8AndSize(ident, &sizes[i])) == NULL)
            goto done;
        PyObject *entry = entry_for(PyList_GET_ITEM(decisions, i), entries, entry_of);
        if (entry == NULL)
            goto done;
        PyList_SET_ITEM(held, i, entry);
        Py_ssize_t size = PyBytes_GET_SIZE(PyTuple_GET_ITEM(entry, 1)) + 1 +
                          varint_size((uint64_t)sizes[i]) + sizes[i] +
                          PyBytes_GET_SIZE(PyTuple_GET_ITEM(entry, 2));
        total += framed ? 1 + varint_size((uint64_t)size) + size : size;
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        goto done;
    char *w = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *entry = PyList_GET_ITEM(held, i);
        PyObject *head = PyTuple_GET_ITEM(entry, 1), *tail = PyTuple_GET_ITEM(entry, 2);
        Py_ssize_t nh = PyBytes_GET_SIZE(head), nt = PyBytes_GET_SIZE(tail);
        if (framed) {
            *w++ = 0x0A; /* AuthorizeBatchResponse.responses, length-delimited */
            w = put_varint(w, (uint64_t)(nh + 1 + varint_size((uint64_t)sizes[i]) + sizes[i] +
                                         nt));
        }
        memcpy(w, PyBytes_AS_STRING(head), (size_t)nh);
        w += nh;
        *w++ = 0x2A; /* AuthorizeResponse.decision_id, length-delimited */
        w = put_varint(w, (uint64_t)sizes[i]);
        memcpy(w, texts[i], (size_t)sizes[i]);
        w += sizes[i];
        memcpy(w, PyBytes_AS_STRING(tail), (size_t)nt);
        w += nt;
    }
done:
    PyMem_Free(texts);
    PyMem_Free(sizes);
    Py_DECREF(held);
    return out;
}

/* --- the engine's requests ------------------------------------------------------------------
 *
 * request_types(Subject, fields, Action, fields, Resource, fields, Request, fields): the
 * engine's classes that plain_request and batch_requests build, with the member descriptors
 * (slots) of their fields, in the order given (pdp.server.convert registers them once,
 * checked: slotted dataclasses whose __init__ sets exactly those fields and runs nothing
 * else). Each object is made by its class's __new__ and its fields set through those slots,
 * as the dataclass __init__ sets them, without a Python call per object.
 *
 * plain_request(decoded, empty, peer_ip, max_length) -> Request | None
 *
 * The Request of a decoded request (decode_request's) without batch defaults: Request(
 * Subject(type, id, properties), Action(name, properties), Resource(type, id,
 * properties), context, peer_ip), an absent properties or context being ``empty``.
 *
 * batch_requests(items, subject, action, context, empty, peer_ip, max_length) -> list | None
 *
 * The Request of each decoded batch item (decode_batch's) that holds a resource and neither
 * a subject nor an action, which come from the batch's defaults (``subject`` and
 * ``action``, objects already converted): Request(subject, action, Resource(type, id,
 * properties, else ``empty``), the item's context, else ``context``, peer_ip).
 *
 * Both give the values pdp.server.convert.decoded_request gives, or None when a part is
 * absent or would be refused (an empty type, subject id or action name; any of them, or an
 * id, longer than ``max_length`` code points) or the batch is of another shape: the caller
 * converts in Python, which raises the right error. tests/server/test_wire.py holds them to
 * protobuf's parse and to the Python conversion. */

enum { SUBJECT, ACTION, RESOURCE, REQUEST, CLASSES };
static const Py_ssize_t field_count[CLASSES] = {3, 2, 3, 5};
#define MOST_FIELDS 5

static PyTypeObject *classes[CLASSES];
static PyObject *slots[CLASSES][MOST_FIELDS];
/* member_slots (pdp/_slotted.h) of ``names``, a tuple of ``count`` field names. */
static int slots_of(const char *who, PyObject *cls, PyObject *names, PyObject **out,
                    Py_ssize_t count) {
    if (!PyType_Check(cls) || !PyTuple_Check(names) || PyTuple_GET_SIZE(names) != count) {
        PyErr_Format(PyExc_TypeError, "%s: a class and a tuple of its %zd fields", who, count);
        return -1;
    }
    return member_slots(who, cls, &PyTuple_GET_ITEM(names, 0), out, count);
}

static PyObject *request_types(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 * CLASSES) {
        PyErr_SetString(PyExc_TypeError, "request_types takes 8 arguments");
        return NULL;
    }
    PyObject *found[CLASSES][MOST_FIELDS];
    for (int c = 0; c < CLASSES; c++) {
        if (slots_of("request_types", args[2 * c], args[2 * c + 1], found[c],
                     field_count[c]) < 0) {
            for (int k = 0; k < c; k++)
                for (Py_ssize_t i = 0; i < field_count[k]; i++)
                    Py_DECREF(found[k][i]);
            return NULL;
        }
    }
    /* Every class checked: replace the registration whole. */
    for (int c = 0; c < CLASSES; c++) {
        for (Py_ssize_t i = 0; i < field_count[c]; i++)
            Py_XSETREF(slots[c][i], found[c][i]);
        Py_XSETREF(classes[c], (PyTypeObject *)Py_NewRef(args[2 * c]));
    }
    Py_RETURN_NONE;
}

/* made_of (pdp/_slotted.h) for the registered class ``c`` (SUBJECT, ACTION, RESOURCE or
 * REQUEST): untracked, as it cannot be part of a cycle, being made after every value it holds
 * and never assigned to afterwards (the engine's contract, see _REQUEST_NOTE in
 * pdp/policy/model.py). A batch's Requests wait in the audit and detection queues long
 * enough to be walked by several collections: tracked, the collector cost ~70 µs of server
 * CPU per AuthorizeBatch(100) call, ~27-30 without them. */
static PyObject *made(int c, PyObject *const *values) {
    return made_of(classes[c], slots[c], values, field_count[c]);
}

/* ``text`` is a str of 1 (0 when ``may_be_empty``) to ``most`` code points. */
static int fits(PyObject *text, Py_ssize_t most, int may_be_empty) {
    if (!PyUnicode_CheckExact(text))
        return 0;
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    return (may_be_empty || length > 0) && length <= most;
}

/* An entity (type, id, properties) or a named part (name, properties) of a decoded request
 * as class ``c``; NULL without an exception when it is absent or would be refused. */
static PyObject *part(int c, PyObject *decoded, PyObject *empty, Py_ssize_t most) {
    Py_ssize_t size = c == ACTION ? 2 : 3;
    if (!PyTuple_CheckExact(decoded) || PyTuple_GET_SIZE(decoded) != size)
        return NULL;
    PyObject *values[3];
    for (Py_ssize_t i = 0; i < size - 1; i++) {
        values[i] = PyTuple_GET_ITEM(decoded, i);
        /* Only a resource id may be empty. */
        if (!fits(values[i], most, c == RESOURCE && i == 1))
            return NULL;
    }
    PyObject *props = PyTuple_GET_ITEM(decoded, size - 1);
    values[size - 1] = props == Py_None ? empty : props;
    return made(c, values);
}

static int registered(void) {
    if (classes[REQUEST] != NULL)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "request_types() was not called");
    return 0;
}

static PyObject *plain_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4 || !PyTuple_CheckExact(args[0]) || PyTuple_GET_SIZE(args[0]) != 7 ||
        !PyLong_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "plain_request(decoded, empty, peer_ip, max_length)");
        return NULL;
    }
    if (!registered())
        return NULL;
    PyObject *decoded = args[0], *empty = args[1];
    Py_ssize_t most = PyLong_AsSsize_t(args[3]);
    if (most == -1 && PyErr_Occurred())
        return NULL;
    PyObject *values[5] = {NULL, NULL, NULL, NULL, NULL};
    PyObject *out = NULL;
    for (int c = SUBJECT; c <= RESOURCE; c++) {
        if ((values[c] = part(c, PyTuple_GET_ITEM(decoded, c), empty, most)) == NULL)
            goto done;
    }
    PyObject *context = PyTuple_GET_ITEM(decoded, 3);
    values[3] = Py_NewRef(context == Py_None ? empty : context);
    values[4] = Py_NewRef(args[2]);
    out = made(REQUEST, values);
done:
    for (int i = 0; i < 5; i++)
        Py_XDECREF(values[i]);
    if (out == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return out;
}

static PyObject *batch_requests(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 7 || !PyList_CheckExact(args[0]) || !PyLong_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError,
                        "batch_requests(items, subject, action, context, empty, peer_ip, "
                        "max_length)");
        return NULL;
    }
    if (!registered())
        return NULL;
    PyObject *items = args[0], *subject = args[1], *action = args[2], *context = args[3];
    PyObject *empty = args[4], *peer_ip = args[5];
    Py_ssize_t most = PyLong_AsSsize_t(args[6]);
    if (most == -1 && PyErr_Occurred())
        return NULL;
    if (subject == Py_None || action == Py_None)
        Py_RETURN_NONE;
    Py_ssize_t count = PyList_GET_SIZE(items);
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 7 ||
            PyTuple_GET_ITEM(item, 0) != Py_None || PyTuple_GET_ITEM(item, 1) != Py_None)
            goto other;
        PyObject *resource = part(RESOURCE, PyTuple_GET_ITEM(item, 2), empty, most);
        if (resource == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto other;
        }
        PyObject *own = PyTuple_GET_ITEM(item, 3);
        PyObject *fields[5] = {subject, action, resource,
                                                  own == Py_None ? context : own, peer_ip};
        PyObject *request = made(REQUEST, fields);
        Py_DECREF(resource);
        if (request == NULL)
            goto error;
        PyList_SET_ITEM(out, i, request); /* steals the reference */
    }
    return out;
other:
    Py_DECREF(out);
    Py_RETURN_NONE;
error:
    Py_DECREF(out);
    return NULL;
}

/* --- decision events -----------------------------------------------------------------------
 *
 * event_types(Event, fields, DecisionDetails, fields, DECISION, INFO, ALLOW, "allow",
 * "deny", Decision, fields): pdp.events' Event class and its eight fields, in the order its
 * __init__ takes them, DecisionDetails and its one field (the row), the constants a
 * decision event holds (its type and severity, the effect that is an allow, and the two
 * outcomes), and the engine's Decision class with its five fields, read where its slots
 * keep them. pdp.server.convert registers them once, checked as request_types' classes
 * are.
 *
 * decision_event(request, decision, decision_id, actor, peer, time) -> Event
 *
 * What pdp.events.decision_event builds (tests/server/test_wire.py holds the two equal):
 * Event(DECISION, time, INFO, actor, peer, "allow" or "deny", DecisionDetails((subject.id,
 * subject.type, action.name, resource.type, resource.id, decision.rule_id,
 * decision.bundle_version, decision.reason, decision.cached, decision_id)), decision_id),
 * made by made_of as a Request is, without a Python call, and left out of the cycle
 * collector with its row: built after everything it holds and never assigned to once
 * emitted (Event's contract), it waits in the audit and detection queues, and tracked it
 * was walked there by the collections every call's garbage brings on. */

enum { EVENT_FIELDS = 8 };
static PyTypeObject *event_class = NULL, *details_class = NULL;
static PyObject *event_slots[EVENT_FIELDS], *row_slot = NULL;
static PyTypeObject *decision_class = NULL;
static PyObject *decision_slots[5];
static PyObject *decision_type = NULL, *info = NULL, *allow = NULL;
static PyObject *allowed = NULL, *denied = NULL;

/* The attribute names decision_event reads, interned once by event_types. */
enum { N_SUBJECT, N_ACTION, N_RESOURCE, N_ID, N_TYPE, N_NAME, N_RULE_ID, N_BUNDLE_VERSION,
       N_REASON, N_CACHED, N_EFFECT, NAMES };
static const char *const name_text[NAMES] = {
    "subject", "action", "resource", "id", "type", "name", "rule_id", "bundle_version",
    "reason", "cached", "effect"};
static PyObject *names[NAMES];

static int intern_names(void) {
    for (int i = 0; i < NAMES; i++)
        if (names[i] == NULL && (names[i] = PyUnicode_InternFromString(name_text[i])) == NULL)
            return -1;
    return 0;
}

static PyObject *event_types(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 11 || !PyUnicode_Check(args[7]) || !PyUnicode_Check(args[8])) {
        PyErr_SetString(PyExc_TypeError,
                        "event_types(Event, fields, DecisionDetails, fields, DECISION, INFO, "
                        "ALLOW, allow, deny, Decision, fields)");
        return NULL;
    }
    if (intern_names() < 0)
        return NULL;
    PyObject *found[EVENT_FIELDS], *row[1];
    if (slots_of("event_types", args[0], args[1], found, EVENT_FIELDS) < 0)
        return NULL;
    PyObject *decided[5];
    if (slots_of("event_types", args[2], args[3], row, 1) < 0) {
        for (int i = 0; i < EVENT_FIELDS; i++)
            Py_DECREF(found[i]);
        return NULL;
    }
    if (slots_of("event_types", args[9], args[10], decided, 5) < 0) {
        for (int i = 0; i < EVENT_FIELDS; i++)
            Py_DECREF(found[i]);
        Py_DECREF(row[0]);
        return NULL;
    }
    for (int i = 0; i < 5; i++)
        Py_XSETREF(decision_slots[i], decided[i]);
    Py_XSETREF(decision_class, (PyTypeObject *)Py_NewRef(args[9]));
    for (int i = 0; i < EVENT_FIELDS; i++)
        Py_XSETREF(event_slots[i], found[i]);
    Py_XSETREF(row_slot, row[0]);
    Py_XSETREF(event_class, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(details_class, (PyTypeObject *)Py_NewRef(args[2]));
    Py_XSETREF(decision_type, Py_NewRef(args[4]));
    Py_XSETREF(info, Py_NewRef(args[5]));
    Py_XSETREF(allow, Py_NewRef(args[6]));
    Py_XSETREF(allowed, Py_NewRef(args[7]));
    Py_XSETREF(denied, Py_NewRef(args[8]));
    Py_RETURN_NONE;
}

/* obj's field ``name`` (a new reference), or NULL with the AttributeError. An instance of
 * ``cls`` itself (registered, with ``slot`` its member descriptor of that field) is read
 * where the slot keeps it, as the descriptor reads it; any other object by getattr. */
static PyObject *field_of(PyObject *obj, PyTypeObject *cls, PyObject *slot, int name) {
    if (cls != NULL && Py_TYPE(obj) == cls) {
        PyMemberDef *member = ((PyMemberDescrObject *)slot)->d_member;
        if (member->type == T_OBJECT_EX) {
            PyObject *value = *(PyObject **)((char *)obj + member->offset);
            if (value != NULL)
                return Py_NewRef(value);
        }
    }
    return PyObject_GetAttr(obj, names[name]);
}

static PyObject *decision_event(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "decision_event(request, decision, decision_id, actor, peer, time)");
        return NULL;
    }
    if (event_class == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "event_types() was not called");
        return NULL;
    }
    PyObject *request = args[0], *decision = args[1], *ident = args[2];
    PyObject *row = PyTuple_New(10), *details = NULL, *effect = NULL, *out = NULL;
    if (row == NULL)
        return NULL;
    /* subject.id, subject.type, action.name, resource.type, resource.id */
    static const int parts[5] = {SUBJECT, SUBJECT, ACTION, RESOURCE, RESOURCE};
    static const int part_names[5] = {N_SUBJECT, N_SUBJECT, N_ACTION, N_RESOURCE, N_RESOURCE};
    static const int fields[5] = {1, 0, 0, 0, 1}; /* Subject(type, id, ...), Action(name, ...) */
    static const int field_names[5] = {N_ID, N_TYPE, N_NAME, N_TYPE, N_ID};
    for (int i = 0; i < 5; i++) {
        int c = parts[i];
        PyObject *part = field_of(request, classes[REQUEST], slots[REQUEST][c], part_names[i]);
        if (part == NULL)
            goto done;
        PyObject *value = field_of(part, classes[c], slots[c][fields[i]], field_names[i]);
        Py_DECREF(part);
        if (value == NULL)
            goto done;
        PyTuple_SET_ITEM(row, i, value); /* steals the reference */
    }
    /* decision.rule_id, .bundle_version, .reason, .cached: Decision(effect, rule_id, reason,
     * bundle_version, cached) */
    static const int decided[4] = {1, 3, 2, 4};
    for (int i = 0; i < 4; i++) {
        PyObject *value = field_of(decision, decision_class, decision_slots[decided[i]],
                                   N_RULE_ID + i);
        if (value == NULL)
            goto done;
        PyTuple_SET_ITEM(row, 5 + i, value);
    }
    PyTuple_SET_ITEM(row, 9, Py_NewRef(ident));
    PyObject_GC_UnTrack(row);
    if ((details = made_of(details_class, &row_slot, &row, 1)) == NULL)
        goto done;
    if ((effect = field_of(decision, decision_class, decision_slots[0], N_EFFECT)) == NULL)
        goto done;
    PyObject *values[EVENT_FIELDS] = {decision_type, args[5], info, args[3], args[4],
                                      effect == allow ? allowed : denied, details, ident};
    out = made_of(event_class, event_slots, values, EVENT_FIELDS);
done:
    Py_DECREF(row);
    Py_XDECREF(details);
    Py_XDECREF(effect);
    return out;
}

static PyMethodDef methods[] = {
    {"decode_request", decode_request, METH_O,
     "AuthorizeRequest bytes as a tuple of Python values, or None: parse with protobuf."},
    {"decode_batch", decode_batch, METH_O,
     "AuthorizeBatchRequest bytes as (defaults, [request, ...]), or None: parse with "
     "protobuf."},
    {"encode_answers", (PyCFunction)(void (*)(void))encode_answers, METH_FASTCALL,
     "Serialized AuthorizeResponses of (decision, id) pairs, concatenated (framed: as an "
     "AuthorizeBatchResponse)."},
    {"request_types", (PyCFunction)(void (*)(void))request_types, METH_FASTCALL,
     "Register the Subject, Action, Resource and Request classes plain_request and "
     "batch_requests build, with their fields."},
    {"plain_request", (PyCFunction)(void (*)(void))plain_request, METH_FASTCALL,
     "The Request of a decoded request without batch defaults, or None: convert it in "
     "Python."},
    {"batch_requests", (PyCFunction)(void (*)(void))batch_requests, METH_FASTCALL,
     "The Requests of a decoded batch whose items take subject and action from its "
     "defaults, or None: convert it in Python."},
    {"event_types", (PyCFunction)(void (*)(void))event_types, METH_FASTCALL,
     "Register the Event and DecisionDetails classes decision_event builds, with their "
     "fields, and the constants of a decision event."},
    {"decision_event", (PyCFunction)(void (*)(void))decision_event, METH_FASTCALL,
     "The audit event of one decision, as pdp.events.decision_event builds it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "pdp.server._wire",
    .m_doc = "AuthorizeRequest wire bytes straight into Python values (see _wire.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__wire(void) { return PyModule_Create(&module); }
