/*
 * pdp/_slotted.h: instances of pdp's slotted dataclasses, made from C. Shared by pdp's C
 * modules (pdp/server/_wire.c, pdp/policy/_json.c); each gets its own static copy.
 */
#ifndef PDP_SLOTTED_H
#define PDP_SLOTTED_H

#include <Python.h>
#include <structmember.h>

/* The member descriptors of the ``count`` fields ``names``, each a slot of the class ``cls``
 * itself, into ``out`` (new references); -1 with TypeError naming ``who``, and nothing kept,
 * otherwise. */
static int member_slots(const char *who, PyObject *cls, PyObject *const *names,
                        PyObject **out, Py_ssize_t count) {
    if (!PyType_Check(cls)) {
        PyErr_Format(PyExc_TypeError, "%s: %R is not a class", who, cls);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = names[i];
        PyObject *slot = PyUnicode_Check(name) ? PyObject_GetAttr(cls, name) : NULL;
        if (slot == NULL || !PyObject_TypeCheck(slot, &PyMemberDescr_Type) ||
            PyDescr_TYPE(slot) != (PyTypeObject *)cls) {
            Py_XDECREF(slot);
            for (Py_ssize_t j = 0; j < i; j++)
                Py_CLEAR(out[j]);
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s: %R is not a slot of %R", who, name, cls);
            return -1;
        }
        out[i] = slot;
    }
    return 0;
}

static PyObject *slotted_no_args = NULL;

/* A new ``cls`` with its ``count`` fields set from ``values`` through ``slots`` (its member
 * descriptors), as a slotted dataclass's __init__ sets them (a frozen one's too), and left out
 * of the cycle collector. The caller vouches that it cannot be part of a cycle: it is made
 * after every value it holds and never assigned to afterwards. It is still freed by its
 * reference count; what it holds stays tracked. */
static PyObject *made_of(PyTypeObject *cls, PyObject *const *slots, PyObject *const *values,
                         Py_ssize_t count) {
    if (slotted_no_args == NULL && (slotted_no_args = PyTuple_New(0)) == NULL)
        return NULL;
    PyObject *obj = cls->tp_new(cls, slotted_no_args, NULL);
    if (obj == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (Py_TYPE(slots[i])->tp_descr_set(slots[i], obj, values[i]) < 0) {
            Py_DECREF(obj);
            return NULL;
        }
    }
    if (PyObject_GC_IsTracked(obj))
        PyObject_GC_UnTrack(obj);
    return obj;
}

#endif
