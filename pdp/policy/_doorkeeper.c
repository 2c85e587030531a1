/*
 * pdp.policy._doorkeeper: the decision cache's admission test, in C.
 *
 * The cache stores a decision when its key is asked for the second time; which keys were
 * asked for once is kept in two generations of a Bloom filter, two bits per key (see
 * pdp.policy.cache.DecisionCache). Written in Python, testing and setting those bits cost
 * ~0.9 us per uncached decision, as much as a cache lookup and a third of the whole
 * uncached decision; here it is one call. The bits are the ones the Python code used:
 * tests/policy/test_doorkeeper.py holds this to that reference.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The bit of ``index`` in ``bits`` (the caller checked that the byte is there). */
#define BIT(bits, index) (((bits)[(index) >> 3] >> ((index) & 7)) & 1)

/* seen_before(seen, before, hash, mask) -> bool
 *
 * True when both bits of ``hash`` (``hash & mask`` and ``(hash >> 24) & mask``, the shift
 * rounding down as Python's) are set in ``seen`` or both in ``before``. Otherwise sets
 * both in ``seen`` and returns False. ``seen`` and ``before`` are bytearrays of at least
 * ``(mask >> 3) + 1`` bytes and ``mask`` is below 2**40; ValueError otherwise. */
static PyObject *seen_before(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "seen_before(seen, before, hash, mask)");
        return NULL;
    }
    PyObject *seen = args[0], *before = args[1];
    if (!PyByteArray_Check(seen) || !PyByteArray_Check(before)) {
        PyErr_SetString(PyExc_TypeError, "seen and before must be bytearrays");
        return NULL;
    }
    Py_hash_t hash = PyLong_AsSsize_t(args[2]);
    if (hash == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t mask = PyLong_AsSsize_t(args[3]);
    if (mask == -1 && PyErr_Occurred())
        return NULL;
    if (mask < 0 || mask >= ((Py_ssize_t)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "mask must be in [0, 2**40)");
        return NULL;
    }
    Py_ssize_t need = (mask >> 3) + 1;
    if (PyByteArray_GET_SIZE(seen) < need || PyByteArray_GET_SIZE(before) < need) {
        PyErr_SetString(PyExc_ValueError, "seen and before must hold mask + 1 bits");
        return NULL;
    }
    /* Python's >> rounds a negative int down (an arithmetic shift); a logical shift of the
     * same 64 bits differs from it only in the top 24 bits, which a mask below 2**40 (the
     * only kind accepted above) clears. */
    uint64_t h = (uint64_t)hash;
    uint64_t a = h & (uint64_t)mask, b = (h >> 24) & (uint64_t)mask;
    unsigned char *s = (unsigned char *)PyByteArray_AS_STRING(seen);
    unsigned char *o = (unsigned char *)PyByteArray_AS_STRING(before);
    if ((BIT(s, a) && BIT(s, b)) || (BIT(o, a) && BIT(o, b)))
        Py_RETURN_TRUE;
    s[a >> 3] |= (unsigned char)(1u << (a & 7));
    s[b >> 3] |= (unsigned char)(1u << (b & 7));
    Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"seen_before", (PyCFunction)(void (*)(void))seen_before, METH_FASTCALL,
     "True when the doorkeeper's bits of hash are set (in seen or in before); else set "
     "them in seen and return False."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "pdp.policy._doorkeeper",
    .m_doc = "The decision cache's admission test (see _doorkeeper.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__doorkeeper(void) { return PyModule_Create(&module); }
