/*
 * pdp.policy._json: the bundle loader's and the compiler's per-rule work, in C.
 *
 * pairs_to_dict: a bundle must not name a key twice in one mapping (JSON's own parsers
 * silently keep the last one, so what a reviewer reads and what the engine runs could
 * differ). The loader therefore asks the json module for every object's (key, value) pairs
 * and builds the dict itself, refusing a repeated key. Written in Python, that hook cost
 * ~0.4 s of the ~1.5 s a 100,000-rule bundle took to load (400,000 objects); here it costs
 * about what the json module's own dict building does.
 *
 * The rest is the per-rule work of a push, each part the same as the Python it replaced and
 * tested against it (docs/performance.md, item 40): Key, under which the loader remembers
 * validated rule parts; quick_rule, the loader's fast path for a rule whose parts were all
 * met before; canonical_rules, the canonical form the signed digest is taken over; and
 * compile_rules, the compiler's loop over the rules. A 100,000-rule push took 1.44 s with
 * them in Python, 1.00 s with them here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_slotted.h"

/* pairs_to_dict([(key, value), ...]) -> dict; ValueError "duplicate key 'k'" when a key
 * repeats (the message the loader's callers match). */
static PyObject *pairs_to_dict(PyObject *module, PyObject *pairs) {
    (void)module;
    if (!PyList_Check(pairs)) {
        PyErr_Format(PyExc_TypeError, "expected a list of pairs, got %.100s",
                     Py_TYPE(pairs)->tp_name);
        return NULL;
    }
    PyObject *dict = PyDict_New();
    if (dict == NULL)
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(pairs);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "expected (key, value) pairs");
            goto fail;
        }
        PyObject *key = PyTuple_GET_ITEM(pair, 0);
        if (PyDict_SetItem(dict, key, PyTuple_GET_ITEM(pair, 1)) < 0)
            goto fail;
        if (PyDict_GET_SIZE(dict) != i + 1) { /* the key was there: it repeats */
            PyErr_Format(PyExc_ValueError, "duplicate key %R", key);
            goto fail;
        }
    }
    return dict;
fail:
    Py_DECREF(dict);
    return NULL;
}

/* --- Key ---------------------------------------------------------------------------------
 *
 * Key(value): a dict key standing for a JSON value (str, int, float, bool, None, list, dict),
 * equal to another Key exactly when their values' repr() would be equal: the same types all
 * the way down (1, 1.0, True and "1" differ), the same order of a mapping's keys, floats alike
 * to the bit. It replaces repr(value) as the key the loader remembers validated rule parts
 * under: repr() of a rule's parts cost ~1.5 µs per rule, more than all the rest of the fast
 * path. A Key holds its value (read only while loading) and its hash, computed once; it
 * raises ValueError for any other type and RecursionError when nested too deeply. */

typedef struct {
    PyObject_HEAD
    PyObject *value;
    Py_hash_t hash;
} KeyObject;

static PyTypeObject KeyType;

/* Mixing as a tuple's hash does (xxHash's round). */
#if SIZEOF_PY_UHASH_T > 4
#define MIX_1 11400714785074694791ULL
#define MIX_2 14029467366897019727ULL
#define MIX_ROTATE(x) ((x << 31) | (x >> 33))
#else
#define MIX_1 2654435761UL
#define MIX_2 2246822519UL
#define MIX_ROTATE(x) ((x << 13) | (x >> 19))
#endif

static Py_uhash_t mix(Py_uhash_t acc, Py_uhash_t lane) {
    acc += lane * MIX_2;
    acc = MIX_ROTATE(acc);
    return acc * MIX_1;
}

/* The hash of a JSON value, its type mixed in; -1 with an error for any other type. */
static Py_hash_t strict_hash(PyObject *v) {
    PyTypeObject *t = Py_TYPE(v);
    Py_uhash_t acc = (Py_uhash_t)(uintptr_t)t;
    if (t == &PyUnicode_Type || t == &PyLong_Type || t == &PyFloat_Type || t == &PyBool_Type ||
        v == Py_None) {
        Py_hash_t h = PyObject_Hash(v);
        if (h == -1)
            return -1;
        acc = mix(acc, (Py_uhash_t)h);
        return acc == (Py_uhash_t)-1 ? 1546275796 : (Py_hash_t)acc;  /* -1 means an error */
    }
    if (t != &PyList_Type && t != &PyDict_Type) {
        PyErr_Format(PyExc_ValueError, "not a JSON value: %.100s", t->tp_name);
        return -1;
    }
    if (Py_EnterRecursiveCall(" in a bundle value"))
        return -1;
    Py_hash_t h;
    if (t == &PyList_Type) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(v); i++) {
            if ((h = strict_hash(PyList_GET_ITEM(v, i))) == -1)
                goto fail;
            acc = mix(acc, (Py_uhash_t)h);
        }
    } else {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(v, &pos, &key, &value)) {
            if ((h = strict_hash(key)) == -1)
                goto fail;
            acc = mix(acc, (Py_uhash_t)h);
            if ((h = strict_hash(value)) == -1)
                goto fail;
            acc = mix(acc, (Py_uhash_t)h);
        }
    }
    Py_LeaveRecursiveCall();
    acc = mix(acc, (Py_uhash_t)(t == &PyList_Type ? PyList_GET_SIZE(v) : PyDict_GET_SIZE(v)));
    return acc == (Py_uhash_t)-1 ? 1546275796 : (Py_hash_t)acc;
fail:
    Py_LeaveRecursiveCall();
    return -1;
}

/* 1 when the JSON values ``a`` and ``b`` have equal repr()s, 0 if not, -1 on error. */
static int strict_eq(PyObject *a, PyObject *b) {
    if (a == b)
        return 1;
    PyTypeObject *t = Py_TYPE(a);
    if (t != Py_TYPE(b))
        return 0;
    if (t == &PyUnicode_Type)
        return PyUnicode_Compare(a, b) == 0 ? 1 : (PyErr_Occurred() ? -1 : 0);
    if (t == &PyLong_Type)
        return PyObject_RichCompareBool(a, b, Py_EQ);
    if (t == &PyFloat_Type) {  /* alike to the bit: 0.0 and -0.0 differ, as their repr()s do */
        double x = PyFloat_AS_DOUBLE(a), y = PyFloat_AS_DOUBLE(b);
        return memcmp(&x, &y, sizeof x) == 0;
    }
    if (t != &PyList_Type && t != &PyDict_Type)  /* bool and None are singletons */
        return 0;
    if (t == &PyList_Type ? PyList_GET_SIZE(a) != PyList_GET_SIZE(b)
                          : PyDict_GET_SIZE(a) != PyDict_GET_SIZE(b))
        return 0;
    if (Py_EnterRecursiveCall(" in a bundle value"))
        return -1;
    int same = 1;
    if (t == &PyList_Type) {
        for (Py_ssize_t i = 0; same == 1 && i < PyList_GET_SIZE(a); i++)
            same = strict_eq(PyList_GET_ITEM(a, i), PyList_GET_ITEM(b, i));
    } else {  /* in order: repr() of a dict is */
        Py_ssize_t pa = 0, pb = 0;
        PyObject *ka, *va, *kb, *vb;
        while (same == 1 && PyDict_Next(a, &pa, &ka, &va)) {
            if (!PyDict_Next(b, &pb, &kb, &vb)) {
                same = 0;
                break;
            }
            same = strict_eq(ka, kb);
            if (same == 1)
                same = strict_eq(va, vb);
        }
    }
    Py_LeaveRecursiveCall();
    return same;
}

/* A new Key of ``value``; NULL with ValueError or RecursionError when it cannot be one. */
static PyObject *key_of(PyObject *value) {
    Py_hash_t hash = strict_hash(value);
    if (hash == -1)
        return NULL;
    KeyObject *key = PyObject_New(KeyObject, &KeyType);
    if (key == NULL)
        return NULL;
    key->value = Py_NewRef(value);
    key->hash = hash;
    return (PyObject *)key;
}

static PyObject *key_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    (void)type;
    PyObject *value;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Key() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Key", 1, 1, &value))
        return NULL;
    return key_of(value);
}

static void key_dealloc(KeyObject *self) {
    Py_DECREF(self->value);
    PyObject_Free(self);
}

static Py_hash_t key_hash(KeyObject *self) { return self->hash; }

static PyObject *key_richcompare(PyObject *a, PyObject *b, int op) {
    if (!PyObject_TypeCheck(b, &KeyType) || (op != Py_EQ && op != Py_NE))
        Py_RETURN_NOTIMPLEMENTED;
    KeyObject *x = (KeyObject *)a, *y = (KeyObject *)b;
    int same = strict_eq(x->value, y->value);  /* a dict compares the hashes first */
    if (same < 0)
        return NULL;
    return PyBool_FromLong(op == Py_EQ ? same : !same);
}

static PyObject *key_repr(KeyObject *self) { return PyUnicode_FromFormat("Key(%R)", self->value); }

static PyTypeObject KeyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pdp.policy._json.Key",
    .tp_basicsize = sizeof(KeyObject),
    .tp_dealloc = (destructor)key_dealloc,
    .tp_repr = (reprfunc)key_repr,
    .tp_hash = (hashfunc)key_hash,
    .tp_richcompare = key_richcompare,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A dict key standing for a JSON value: equal when their repr()s would be.",
    .tp_new = key_new,
};

/* --- quick_rule ---------------------------------------------------------------------------
 *
 * The loader validates a rule's parts (actions, subjects, resource ids, condition) once per
 * spelling and remembers the result under the part's Key (above): pdp/policy/loader.py,
 * _Validator. quick_rule(raw, flags, actions_seen, subjects_seen, ids_seen, when_seen,
 * types_seen) is the Rule of ``raw`` when every check a rule needs beyond those remembered
 * parts passes here, else None: the caller then takes the full path (_Validator.rule), which
 * finds and names any fault. Returning None is always
 * safe; returning a Rule is only allowed where the full path would return an equal one
 * (tests/policy/test_policy_large.py holds the two paths to the same bundles).
 *
 * A Rule and its ResourceMatch are made as a frozen slotted dataclass's __init__ makes them
 * (their member descriptors set the fields) and left out of the cycle collector: each is made
 * after every value it holds and is never assigned to afterwards, so it cannot be part of a
 * cycle, and it is still freed by its reference count. A 100,000-rule bundle then holds
 * 200,000 fewer objects for the collections that follow its load to walk. */

enum { F_ID, F_EFFECT, F_ACTIONS, F_SUBJECTS, F_RESOURCES, F_WHEN, F_DESCRIPTION, RULE_FIELDS };
enum { R_TYPE, R_IDS, RESOURCE_FIELDS };

static PyTypeObject *rule_type = NULL, *resource_type = NULL;
static PyObject *rule_slots[RULE_FIELDS], *resource_slots[RESOURCE_FIELDS];
static PyObject *allow_value = NULL, *deny_value = NULL, *rule_keys = NULL;
static PyObject *resource_keys = NULL, *nothing = NULL, *no_args = NULL;
static PyObject *s_id, *s_effect, *s_actions, *s_subjects, *s_resources, *s_when;
static PyObject *s_description, *s_type, *s_ids, *s_allow, *s_deny, *s_star, *s_empty;
static PyObject *s_clock, *s_peer;

static int interned(void) {
    if (no_args != NULL)  /* made last */
        return 0;
    struct { PyObject **to; const char *text; } all[] = {
        {&s_id, "id"}, {&s_effect, "effect"}, {&s_actions, "actions"},
        {&s_subjects, "subjects"}, {&s_resources, "resources"}, {&s_when, "when"},
        {&s_description, "description"}, {&s_type, "type"}, {&s_ids, "ids"},
        {&s_allow, "allow"}, {&s_deny, "deny"}, {&s_star, "*"}, {&s_empty, ""},
        {&s_clock, "clock"}, {&s_peer, "peer"},
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if ((*all[i].to = PyUnicode_InternFromString(all[i].text)) == NULL)
            return -1;
    return (no_args = PyTuple_New(0)) == NULL ? -1 : 0;
}

/* rule_types(Rule, ResourceMatch, Effect.ALLOW, Effect.DENY, rule_keys, resource_keys,
 * nothing): what quick_rule builds and checks against; called once by the loader. */
static PyObject *rule_types(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 7 || !PyType_Check(args[0]) || !PyType_Check(args[1]) ||
        !PyFrozenSet_CheckExact(args[4]) || !PyFrozenSet_CheckExact(args[5]) ||
        !PyDict_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError, "rule_types(Rule, ResourceMatch, allow, deny, "
                                         "rule keys, resource keys, nothing)");
        return NULL;
    }
    if (interned() < 0)
        return NULL;
    PyObject *rule_names[RULE_FIELDS] = {s_id, s_effect, s_actions, s_subjects,
                                         s_resources, s_when, s_description};
    PyObject *resource_names[RESOURCE_FIELDS] = {s_type, s_ids};
    PyObject *rs[RULE_FIELDS], *ms[RESOURCE_FIELDS];
    if (member_slots("rule_types", args[0], rule_names, rs, RULE_FIELDS) < 0)
        return NULL;
    if (member_slots("rule_types", args[1], resource_names, ms, RESOURCE_FIELDS) < 0) {
        for (int i = 0; i < RULE_FIELDS; i++)
            Py_DECREF(rs[i]);
        return NULL;
    }
    for (int i = 0; i < RULE_FIELDS; i++)
        Py_XSETREF(rule_slots[i], rs[i]);
    for (int i = 0; i < RESOURCE_FIELDS; i++)
        Py_XSETREF(resource_slots[i], ms[i]);
    Py_XSETREF(rule_type, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(resource_type, (PyTypeObject *)Py_NewRef(args[1]));
    Py_XSETREF(allow_value, Py_NewRef(args[2]));
    Py_XSETREF(deny_value, Py_NewRef(args[3]));
    Py_XSETREF(rule_keys, Py_NewRef(args[4]));
    Py_XSETREF(resource_keys, Py_NewRef(args[5]));
    Py_XSETREF(nothing, Py_NewRef(args[6]));
    Py_RETURN_NONE;
}

/* 1 when every key of the dict ``d`` is in the frozenset ``allowed``, 0 if not, -1 on error. */
static int keys_within(PyObject *d, PyObject *allowed) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(d, &pos, &key, &value)) {
        int in = PySet_Contains(allowed, key);
        if (in <= 0)
            return in;
    }
    return 1;
}

/* memo[Key(value)], borrowed; NULL with no error when it is not there or when value cannot
 * be a Key (another type, or nested too deeply: the full path reports what is wrong); NULL
 * with an error otherwise. The memo holds the value it was found under alive. */
static PyObject *remembered(PyObject *memo, PyObject *value) {
    PyObject *key = key_of(value);
    if (key == NULL) {
        if (PyErr_ExceptionMatches(PyExc_RecursionError) ||
            PyErr_ExceptionMatches(PyExc_ValueError))
            PyErr_Clear();
        return NULL;
    }
    PyObject *found = PyDict_GetItemWithError(memo, key);
    Py_DECREF(key);
    return found;
}

/* The value of ``key`` in the dict ``d`` (borrowed), ``fallback`` when absent, NULL on error. */
static PyObject *get_or(PyObject *d, PyObject *key, PyObject *fallback) {
    PyObject *found = PyDict_GetItemWithError(d, key);
    return found != NULL || PyErr_Occurred() ? found : fallback;
}

#define NOT_QUICK() do { if (PyErr_Occurred()) return NULL; Py_RETURN_NONE; } while (0)

static PyObject *quick_rule(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (rule_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "quick_rule before rule_types");
        return NULL;
    }
    if (nargs != 7 || !PyDict_CheckExact(args[2]) || !PyDict_CheckExact(args[3]) ||
        !PyDict_CheckExact(args[4]) || !PyDict_CheckExact(args[5]) ||
        !PyDict_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError, "quick_rule(raw, flags, actions_seen, subjects_seen, "
                                         "ids_seen, when_seen, types_seen)");
        return NULL;
    }
    PyObject *raw = args[0], *flags = args[1];
    if (!PyDict_CheckExact(raw))
        Py_RETURN_NONE;
    int ok = keys_within(raw, rule_keys);
    if (ok <= 0)
        NOT_QUICK();
    PyObject *actions_raw = PyDict_GetItemWithError(raw, s_actions);
    if (actions_raw == NULL)
        NOT_QUICK();
    PyObject *rule_id = get_or(raw, s_id, Py_None);
    PyObject *effect_text = get_or(raw, s_effect, Py_None);
    PyObject *description = get_or(raw, s_description, s_empty);
    if (rule_id == NULL || effect_text == NULL || description == NULL)
        return NULL;
    if (!PyUnicode_CheckExact(rule_id) || PyUnicode_GET_LENGTH(rule_id) == 0 ||
        !PyUnicode_CheckExact(description) || !PyUnicode_CheckExact(effect_text))
        Py_RETURN_NONE;
    PyObject *effect;
    if (PyUnicode_Compare(effect_text, s_allow) == 0)
        effect = allow_value;
    else if (PyUnicode_Compare(effect_text, s_deny) == 0)
        effect = deny_value;
    else
        NOT_QUICK();
    PyObject *actions = remembered(args[2], actions_raw);
    if (actions == NULL)
        NOT_QUICK();
    PyObject *subjects_raw = get_or(raw, s_subjects, nothing);
    if (subjects_raw == NULL)
        return NULL;
    PyObject *subjects = remembered(args[3], subjects_raw);
    if (subjects == NULL)
        NOT_QUICK();
    PyObject *res = get_or(raw, s_resources, nothing);
    if (res == NULL)
        return NULL;
    if (!PyDict_CheckExact(res))
        Py_RETURN_NONE;
    if ((ok = keys_within(res, resource_keys)) <= 0)
        NOT_QUICK();
    PyObject *rtype = get_or(res, s_type, s_star);
    if (rtype == NULL)
        return NULL;
    if (!PyUnicode_CheckExact(rtype) || PyUnicode_GET_LENGTH(rtype) == 0)
        Py_RETURN_NONE;
    Py_ssize_t length = PyUnicode_GET_LENGTH(rtype);
    Py_ssize_t open = PyUnicode_FindChar(rtype, '[', 0, length, 1);
    Py_ssize_t close = open == -1 ? PyUnicode_FindChar(rtype, ']', 0, length, 1) : open;
    if (open == -2 || close == -2)
        return NULL;
    if (close != -1)  /* a "[" or a "]": the full path decides what the pattern means */
        Py_RETURN_NONE;
    PyObject *ids = no_args;  /* () */
    PyObject *ids_raw = PyDict_GetItemWithError(res, s_ids);
    if (ids_raw != NULL) {
        if ((ids = remembered(args[4], ids_raw)) == NULL)
            NOT_QUICK();
    } else if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *when = Py_None, *reads_clock = NULL, *reads_peer = NULL;
    PyObject *when_raw = PyDict_GetItemWithError(raw, s_when);
    if (when_raw != NULL) {
        PyObject *found = remembered(args[5], when_raw);
        if (found == NULL)
            NOT_QUICK();
        if (!PyTuple_CheckExact(found) || PyTuple_GET_SIZE(found) != 3) {
            PyErr_SetString(PyExc_TypeError, "when_seen holds (when, reads_clock, reads_peer)");
            return NULL;
        }
        when = PyTuple_GET_ITEM(found, 0);
        reads_clock = PyTuple_GET_ITEM(found, 1);
        reads_peer = PyTuple_GET_ITEM(found, 2);
    } else if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *shared = PyDict_SetDefault(args[6], rtype, rtype);  /* one str per type */
    if (shared == NULL)
        return NULL;
    if (reads_clock != NULL) {
        int clock = PyObject_IsTrue(reads_clock), peer = PyObject_IsTrue(reads_peer);
        if (clock < 0 || peer < 0)
            return NULL;
        if (clock && PyObject_SetAttr(flags, s_clock, Py_True) < 0)
            return NULL;
        if (peer && PyObject_SetAttr(flags, s_peer, Py_True) < 0)
            return NULL;
    }
    PyObject *resource_values[RESOURCE_FIELDS] = {shared, ids};
    PyObject *resources = made_of(resource_type, resource_slots, resource_values,
                                  RESOURCE_FIELDS);
    if (resources == NULL)
        return NULL;
    PyObject *values[RULE_FIELDS] = {rule_id, effect, actions, subjects,
                                     resources, when, description};
    PyObject *rule = made_of(rule_type, rule_slots, values, RULE_FIELDS);
    Py_DECREF(resources);
    return rule;
}

/* --- canonical_rules ----------------------------------------------------------------------
 *
 * canonical_rules(rules, start, stop, parts, make, quote): the canonical JSON of
 * rules[start:stop] (Rules, as quick_rule and the full path make them), each after a "," but
 * the bundle's first; what pdp/policy/loader.py's _canonical_parts yields between the
 * bundle's head and tail, and the digest a bundle is signed over is taken of. A rule's shared
 * parts are encoded once: parts[id(part)], else make(part, kind) (kind 0: actions or ids, 1:
 * subjects, 2: a condition), which also stores it there; quote(text) is the JSON encoder's
 * own string encoder. The same text as the Python it replaces, ~3x faster (the digest was
 * ~15 % of a 100,000-rule push). */

static PyObject *s_head, *s_description_key, *s_effect_allow, *s_effect_deny;
static PyObject *s_ids_key, *s_type_key, *s_subjects_key, *s_when_key, *s_close, *s_null;
static PyObject *s_quoted_empty, *s_comma;

static int canonical_strings(void) {
    if (s_comma != NULL)  /* made last */
        return 0;
    struct { PyObject **to; const char *text; } all[] = {
        {&s_head, "{\"actions\":"}, {&s_description_key, ",\"description\":"},
        {&s_effect_allow, ",\"effect\":\"allow\",\"id\":"},
        {&s_effect_deny, ",\"effect\":\"deny\",\"id\":"},
        {&s_ids_key, ",\"resources\":{\"ids\":"}, {&s_type_key, ",\"type\":"},
        {&s_subjects_key, "},\"subjects\":"}, {&s_when_key, ",\"when\":"}, {&s_close, "}"},
        {&s_null, "null"}, {&s_quoted_empty, "\"\""}, {&s_comma, ","},
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if ((*all[i].to = PyUnicode_InternFromString(all[i].text)) == NULL)
            return -1;
    return 0;
}

/* The field ``slot`` of ``obj`` (a new reference). */
static PyObject *field(PyObject *slot, PyObject *obj) {
    return Py_TYPE(slot)->tp_descr_get(slot, obj, (PyObject *)Py_TYPE(obj));
}

/* parts[id(value)], else make(value, kind): a new reference. */
static PyObject *encoded(PyObject *parts, PyObject *make, PyObject *value, int kind) {
    PyObject *id = PyLong_FromVoidPtr(value);
    if (id == NULL)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(parts, id);
    Py_DECREF(id);
    if (found != NULL)
        return Py_NewRef(found);
    if (PyErr_Occurred())
        return NULL;
    PyObject *text = PyObject_CallFunction(make, "Oi", value, kind);
    if (text != NULL && !PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "make() must return a str");
        Py_CLEAR(text);
    }
    return text;
}

/* Append ``text`` (a new reference, or NULL on error) to ``pieces``, which keeps it. */
static int add(PyObject *pieces, PyObject *text) {
    if (text == NULL)
        return -1;
    int failed = PyList_Append(pieces, text);
    Py_DECREF(text);
    return failed;
}

/* What canonical_rules and compile_rules read of a Rule: its fields, and its resources' type
 * and ids, all new references (rule_view_clear drops them). */
typedef struct {
    PyObject *f[RULE_FIELDS];
    PyObject *rtype, *ids;
} RuleView;

static void rule_view_clear(RuleView *v) {
    for (int i = 0; i < RULE_FIELDS; i++)
        Py_CLEAR(v->f[i]);
    Py_CLEAR(v->rtype);
    Py_CLEAR(v->ids);
}

/* 0 with ``v`` filled from ``rule``, a Rule whose id is a str and whose resources are a
 * ResourceMatch with a str type; -1 with TypeError, and nothing held, otherwise. */
static int rule_view(PyObject *rule, RuleView *v) {
    *v = (RuleView){{NULL}, NULL, NULL};
    if (Py_TYPE(rule) != rule_type) {
        PyErr_Format(PyExc_TypeError, "expected a Rule, got %.100s", Py_TYPE(rule)->tp_name);
        return -1;
    }
    for (int i = 0; i < RULE_FIELDS; i++)
        if ((v->f[i] = field(rule_slots[i], rule)) == NULL)
            goto fail;
    if (Py_TYPE(v->f[F_RESOURCES]) != resource_type || !PyUnicode_CheckExact(v->f[F_ID])) {
        PyErr_SetString(PyExc_TypeError, "a Rule's resources must be a ResourceMatch and its "
                                         "id a str");
        goto fail;
    }
    if ((v->rtype = field(resource_slots[R_TYPE], v->f[F_RESOURCES])) == NULL ||
        (v->ids = field(resource_slots[R_IDS], v->f[F_RESOURCES])) == NULL)
        goto fail;
    if (!PyUnicode_CheckExact(v->rtype)) {
        PyErr_SetString(PyExc_TypeError, "a ResourceMatch's type must be a str");
        goto fail;
    }
    return 0;
fail:
    rule_view_clear(v);
    return -1;
}

static int canonical_rule(PyObject *pieces, PyObject *rule, PyObject *parts, PyObject *make,
                          PyObject *quote) {
    RuleView v;
    if (rule_view(rule, &v) < 0)
        return -1;
    PyObject *const *f = v.f, *rtype = v.rtype, *ids = v.ids;
    int failed = -1;
    int empty = PyObject_Not(f[F_DESCRIPTION]);
    if (empty < 0)
        goto done;
    if (add(pieces, Py_NewRef(s_head)) < 0 ||
        add(pieces, encoded(parts, make, f[F_ACTIONS], 0)) < 0 ||
        add(pieces, Py_NewRef(s_description_key)) < 0 ||
        add(pieces, empty ? Py_NewRef(s_quoted_empty)
                          : PyObject_CallOneArg(quote, f[F_DESCRIPTION])) < 0 ||
        add(pieces, Py_NewRef(f[F_EFFECT] == allow_value ? s_effect_allow : s_effect_deny)) < 0 ||
        add(pieces, PyObject_CallOneArg(quote, f[F_ID])) < 0 ||
        add(pieces, Py_NewRef(s_ids_key)) < 0 ||
        add(pieces, encoded(parts, make, ids, 0)) < 0 ||
        add(pieces, Py_NewRef(s_type_key)) < 0 ||
        add(pieces, PyObject_CallOneArg(quote, rtype)) < 0 ||
        add(pieces, Py_NewRef(s_subjects_key)) < 0 ||
        add(pieces, encoded(parts, make, f[F_SUBJECTS], 1)) < 0 ||
        add(pieces, Py_NewRef(s_when_key)) < 0 ||
        add(pieces, f[F_WHEN] == Py_None ? Py_NewRef(s_null)
                                         : encoded(parts, make, f[F_WHEN], 2)) < 0 ||
        add(pieces, Py_NewRef(s_close)) < 0)
        goto done;
    failed = 0;
done:
    rule_view_clear(&v);
    return failed;
}

static PyObject *canonical_rules(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (rule_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "canonical_rules before rule_types");
        return NULL;
    }
    Py_ssize_t start, stop;
    if (nargs != 6 || !PyDict_CheckExact(args[3]) ||
        (start = PyLong_AsSsize_t(args[1])) < 0 || (stop = PyLong_AsSsize_t(args[2])) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "canonical_rules(rules, start, stop, parts, make, "
                                             "quote)");
        return NULL;
    }
    if (canonical_strings() < 0)
        return NULL;
    PyObject *rules = PySequence_Fast(args[0], "rules must be a list or a tuple");
    if (rules == NULL)
        return NULL;
    PyObject *pieces = PyList_New(0), *text = NULL;
    if (pieces == NULL)
        goto done;
    if (stop > PySequence_Fast_GET_SIZE(rules))
        stop = PySequence_Fast_GET_SIZE(rules);
    for (Py_ssize_t i = start; i < stop; i++) {
        if (i > 0 && add(pieces, Py_NewRef(s_comma)) < 0)
            goto done;
        if (canonical_rule(pieces, PySequence_Fast_GET_ITEM(rules, i), args[3], args[4],
                           args[5]) < 0)
            goto done;
    }
    text = PyUnicode_Join(s_empty, pieces);
done:
    Py_XDECREF(pieces);
    Py_DECREF(rules);
    return text;
}

/* --- compile_rules ------------------------------------------------------------------------
 *
 * compile_rules(rules, start, stop, version, makers, state): the per-rule loop of
 * pdp/policy/compiler.py's CompiledPolicy._compile over rules[start:stop] (a few thousand at
 * a time, so that the serving threads get the GIL in between). For each rule, in order, an
 * entry (subject test, id test, condition function, Decision, meta) is appended to
 * ``entries``. What entries share is made once, by the Python callables of
 * ``makers``, the first time a part is met: subject_test(subjects) per subjects object,
 * ids_test(ids) per distinct ids tuple, meta(actions, when) -> (function, meta) per pair of
 * actions and condition objects, and pattern_test(type) for each rule with a glob type.
 * ``state`` is (subject_cache, ids_cache, meta_cache, entries, typed, globbed): the caches
 * of those (dicts, empty at first), the entries (a list), ``typed`` (a dict: each exact
 * resource type to its one rule's position or a list of positions) and ``globbed`` (a list
 * of (position, pattern_test(type)), in order).
 *
 * A rule's Decision (effect, rule_id, "allowed by rule <id>" or "denied by rule <id>", the
 * version, cached=False) is made as its frozen dataclass's __init__ would. It and the entry
 * are left out of the cycle collector, as quick_rule's Rules are: the Decision holds only
 * strs, an int and a bool, and the entry holds what was made before it, none of which refers
 * to an entry, so neither can be part of a cycle; both are still freed by their reference
 * counts. A 100,000-rule policy then holds ~100 objects the collector tracks instead of
 * 200,000, which every full collection walked (the one after each activation included). */

enum { D_EFFECT, D_RULE_ID, D_REASON, D_VERSION, D_CACHED, DECISION_FIELDS };
static PyTypeObject *decision_type = NULL;
static PyObject *decision_slots[DECISION_FIELDS];

/* decision_type(Decision): the class compile_rules makes a Decision of; once, by the
 * compiler. */
static PyObject *register_decision(PyObject *module, PyObject *cls) {
    (void)module;
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "decision_type(Decision)");
        return NULL;
    }
    if (interned() < 0)
        return NULL;
    PyObject *names[DECISION_FIELDS] = {NULL};
    const char *texts[DECISION_FIELDS] = {"effect", "rule_id", "reason", "bundle_version",
                                          "cached"};
    PyObject *found[DECISION_FIELDS];
    int failed = 0;
    for (int i = 0; i < DECISION_FIELDS && !failed; i++)
        failed = (names[i] = PyUnicode_InternFromString(texts[i])) == NULL;
    if (!failed)
        failed = member_slots("decision_type", cls, names, found, DECISION_FIELDS) < 0;
    for (int i = 0; i < DECISION_FIELDS; i++)
        Py_XDECREF(names[i]);
    if (failed)
        return NULL;
    for (int i = 0; i < DECISION_FIELDS; i++)
        Py_XSETREF(decision_slots[i], found[i]);
    Py_XSETREF(decision_type, (PyTypeObject *)Py_NewRef(cls));
    Py_RETURN_NONE;
}

/* cache[key], else make(*args) stored there: a borrowed reference (the cache keeps it). */
static PyObject *once(PyObject *cache, PyObject *key, PyObject *make, PyObject *a,
                      PyObject *b) {
    PyObject *found = PyDict_GetItemWithError(cache, key);
    if (found != NULL || PyErr_Occurred())
        return found;
    PyObject *made = b == NULL ? PyObject_CallOneArg(make, a)
                               : PyObject_CallFunctionObjArgs(make, a, b, NULL);
    if (made == NULL)
        return NULL;
    int failed = PyDict_SetItem(cache, key, made);
    Py_DECREF(made);
    return failed ? NULL : made;
}

/* The Decision of a rule with ``effect`` and ``rule_id``, untracked. */
static PyObject *rule_decision(PyObject *effect, PyObject *rule_id, PyObject *version) {
    PyObject *reason = PyUnicode_FromFormat("%s by rule %U",
                                            effect == allow_value ? "allowed" : "denied",
                                            rule_id);
    if (reason == NULL)
        return NULL;
    PyObject *values[DECISION_FIELDS] = {effect, rule_id, reason, version, Py_False};
    PyObject *decision = made_of(decision_type, decision_slots, values, DECISION_FIELDS);
    Py_DECREF(reason);
    return decision;
}

/* typed[rtype]: the first position as an int, then a list of them. */
static int place(PyObject *typed, PyObject *rtype, Py_ssize_t i) {
    PyObject *position = PyLong_FromSsize_t(i);
    if (position == NULL)
        return -1;
    int failed = -1;
    PyObject *at = PyDict_GetItemWithError(typed, rtype);
    if (at == NULL) {
        if (!PyErr_Occurred())
            failed = PyDict_SetItem(typed, rtype, position);
    } else if (PyList_CheckExact(at)) {
        failed = PyList_Append(at, position);
    } else {
        PyObject *both = PyList_New(2);
        if (both != NULL) {
            PyList_SET_ITEM(both, 0, Py_NewRef(at));
            PyList_SET_ITEM(both, 1, Py_NewRef(position));
            failed = PyDict_SetItem(typed, rtype, both);
            Py_DECREF(both);
        }
    }
    Py_DECREF(position);
    return failed;
}

/* 1 when ``rtype`` holds "*", "?" or "[" (patterns.is_glob), 0 if not, -1 on error. */
static int globbed_type(PyObject *rtype) {
    Py_ssize_t length = PyUnicode_GET_LENGTH(rtype);
    const Py_UCS4 marks[] = {'*', '?', '['};
    for (int k = 0; k < 3; k++) {
        Py_ssize_t at = PyUnicode_FindChar(rtype, marks[k], 0, length, 1);
        if (at != -1)
            return at == -2 ? -1 : 1;
    }
    return 0;
}

static int compile_rule(PyObject *rule, Py_ssize_t i, PyObject *version, PyObject *makers,
                        PyObject *state) {
    PyObject *subject_test = PyTuple_GET_ITEM(makers, 0), *ids_test = PyTuple_GET_ITEM(makers, 1);
    PyObject *meta_of = PyTuple_GET_ITEM(makers, 2), *pattern_test = PyTuple_GET_ITEM(makers, 3);
    PyObject *caches[3] = {PyTuple_GET_ITEM(state, 0), PyTuple_GET_ITEM(state, 1),
                           PyTuple_GET_ITEM(state, 2)};
    PyObject *entries = PyTuple_GET_ITEM(state, 3), *typed = PyTuple_GET_ITEM(state, 4);
    PyObject *globbed = PyTuple_GET_ITEM(state, 5);
    RuleView v;
    if (rule_view(rule, &v) < 0)
        return -1;
    PyObject *const *f = v.f, *rtype = v.rtype, *ids = v.ids;
    PyObject *key = NULL, *decision = NULL;
    int failed = -1;
    PyObject *subject_key = PyLong_FromVoidPtr(f[F_SUBJECTS]);
    if (subject_key == NULL)
        goto done;
    PyObject *subj = once(caches[0], subject_key, subject_test, f[F_SUBJECTS], NULL);
    Py_DECREF(subject_key);
    if (subj == NULL)
        goto done;
    PyObject *res = once(caches[1], ids, ids_test, ids, NULL);
    if (res == NULL)
        goto done;
    PyObject *a = PyLong_FromVoidPtr(f[F_ACTIONS]), *w = PyLong_FromVoidPtr(f[F_WHEN]);
    key = a == NULL || w == NULL ? NULL : PyTuple_Pack(2, a, w);
    Py_XDECREF(a);
    Py_XDECREF(w);
    if (key == NULL)
        goto done;
    PyObject *meta = once(caches[2], key, meta_of, f[F_ACTIONS], f[F_WHEN]);
    if (meta == NULL)
        goto done;
    if (!PyTuple_CheckExact(meta) || PyTuple_GET_SIZE(meta) != 2) {
        PyErr_SetString(PyExc_TypeError, "meta() must return (function, meta)");
        goto done;
    }
    if ((decision = rule_decision(f[F_EFFECT], f[F_ID], version)) == NULL)
        goto done;
    PyObject *entry = PyTuple_Pack(5, subj, res, PyTuple_GET_ITEM(meta, 0), decision,
                                   PyTuple_GET_ITEM(meta, 1));
    if (entry != NULL)  /* nothing it holds was made after it, or refers to it */
        PyObject_GC_UnTrack(entry);
    if (add(entries, entry) < 0)
        goto done;
    int glob = globbed_type(rtype);
    if (glob < 0)
        goto done;
    if (glob) {
        PyObject *test = PyObject_CallOneArg(pattern_test, rtype);
        PyObject *item = test == NULL ? NULL : Py_BuildValue("(nO)", i, test);
        Py_XDECREF(test);
        if (add(globbed, item) < 0)
            goto done;
    } else if (place(typed, rtype, i) < 0) {
        goto done;
    }
    failed = 0;
done:
    rule_view_clear(&v);
    Py_XDECREF(key);
    Py_XDECREF(decision);
    return failed;
}

static PyObject *compile_rules(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (rule_type == NULL || decision_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "compile_rules before rule_types and decision_type");
        return NULL;
    }
    Py_ssize_t start, stop;
    PyObject *makers = nargs == 6 ? args[4] : NULL, *state = nargs == 6 ? args[5] : NULL;
    int ok = nargs == 6 && PyUnicode_CheckExact(args[3]) && PyTuple_CheckExact(makers) &&
             PyTuple_GET_SIZE(makers) == 4 && PyTuple_CheckExact(state) &&
             PyTuple_GET_SIZE(state) == 6;
    for (int k = 0; ok && k < 6; k++) {
        PyObject *item = PyTuple_GET_ITEM(state, k);
        ok = k == 3 || k == 5 ? PyList_CheckExact(item) : PyDict_CheckExact(item);
    }
    if (!ok || (start = PyLong_AsSsize_t(args[1])) < 0 ||
        (stop = PyLong_AsSsize_t(args[2])) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "compile_rules(rules, start, stop, version, "
                                             "(subject_test, ids_test, meta, pattern_test), "
                                             "(subject_cache, ids_cache, meta_cache, entries, "
                                             "typed, globbed))");
        return NULL;
    }
    PyObject *rules = PySequence_Fast(args[0], "rules must be a list or a tuple");
    if (rules == NULL)
        return NULL;
    if (stop > PySequence_Fast_GET_SIZE(rules))
        stop = PySequence_Fast_GET_SIZE(rules);
    for (Py_ssize_t i = start; i < stop; i++) {
        if (compile_rule(PySequence_Fast_GET_ITEM(rules, i), i, args[3], makers, state) < 0) {
            Py_DECREF(rules);
            return NULL;
        }
    }
    Py_DECREF(rules);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pairs_to_dict", pairs_to_dict, METH_O,
     "A dict of JSON (key, value) pairs; ValueError when a key repeats."},
    {"rule_types", (PyCFunction)(void (*)(void))rule_types, METH_FASTCALL,
     "What quick_rule builds: Rule, ResourceMatch, Effect.ALLOW, Effect.DENY, the rule's and "
     "the resource's allowed keys, the empty mapping a missing part means."},
    {"quick_rule", (PyCFunction)(void (*)(void))quick_rule, METH_FASTCALL,
     "The Rule of a raw rule whose parts were all validated before, else None."},
    {"canonical_rules", (PyCFunction)(void (*)(void))canonical_rules, METH_FASTCALL,
     "The canonical JSON of rules[start:stop], each after a comma but the first rule."},
    {"decision_type", register_decision, METH_O, "The class compile_rules makes Decisions of."},
    {"compile_rules", (PyCFunction)(void (*)(void))compile_rules, METH_FASTCALL,
     "The compiler's entries of rules[start:stop], and the resource types' positions."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "pdp.policy._json",
    .m_doc = "The JSON bundle loader's object_pairs_hook, its fast rule path and the Key its "
             "memo uses (see _json.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__json(void) {
    if (PyType_Ready(&KeyType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Key", (PyObject *)&KeyType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
