/* W3C trace context's request-path step, compiled: continue a valid incoming traceparent.
 *
 * trace.py holds the reference: ``continued`` (a WSGI header, str) and
 * ``continued_bytes`` (an ASGI header, bytes). These do the same for what almost every
 * caller sends, a version-00 value of exactly 55 characters: check its shape, refuse
 * all-zero ids, and answer this request's traceparent (the caller's trace, a fresh
 * span id taken from the ones minted ahead) and the caller's trace id. Anything else
 * (another version, another length, a bad shape) goes to the Python function, so the
 * answer is the reference's in every case; tests/test_trace_native.py holds the two to
 * the same result over generated values.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* bound by trace.py (bind()): SPANS.popleft, _next_span, fresh, continued, continued_bytes */
static PyObject *popleft, *next_span, *fresh, *slow_str, *slow_bytes;

static unsigned char hex[256];
static const char zeros[32] = "00000000000000000000000000000000";

/* 1: valid version 00 (ids checked); 0: the shape is wrong; -1: ids are all zeros */
static int
check(const unsigned char *p)
{
    if (p[0] != '0' || p[1] != '0' || p[2] != '-' || p[35] != '-' || p[52] != '-'
        || !hex[p[53]] || !hex[p[54]]) {
        return 0;
    }
    for (int i = 3; i < 35; i++) {
        if (!hex[p[i]]) {
            return 0;
        }
    }
    for (int i = 36; i < 52; i++) {
        if (!hex[p[i]]) {
            return 0;
        }
    }
    if (memcmp(p + 3, zeros, 32) == 0 || memcmp(p + 36, zeros, 16) == 0) {
        return -1;
    }
    return 1;
}

/* a fresh span id, "-" and 16 hex digits, as ASCII; NULL with an exception on failure */
static PyObject *
span(void)
{
    PyObject *s = PyObject_CallNoArgs(popleft);
    if (s == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_IndexError)) {
            return NULL;
        }
        PyErr_Clear();
        s = PyObject_CallNoArgs(next_span);  /* none minted ahead: trace.py mints one */
        if (s == NULL) {
            return NULL;
        }
    }
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_COMPACT_ASCII(s)
        || PyUnicode_GET_LENGTH(s) != 17) {
        Py_DECREF(s);
        PyErr_SetString(PyExc_ValueError, "a minted span id is not '-' and 16 hex digits");
        return NULL;
    }
    return s;
}

/* "00-" + trace + span + "-" + flags into ``out`` (55 bytes) */
static void
build(char *out, const unsigned char *in, PyObject *sp)
{
    memcpy(out, "00-", 3);
    memcpy(out + 3, in + 3, 32);
    memcpy(out + 35, PyUnicode_DATA(sp), 17);
    memcpy(out + 52, in + 52, 3);
}

static PyObject *
fresh_pair(int as_bytes)
{
    PyObject *tp = PyObject_CallNoArgs(fresh);
    if (tp == NULL) {
        return NULL;
    }
    if (as_bytes) {
        Py_SETREF(tp, PyUnicode_AsASCIIString(tp));
        if (tp == NULL) {
            return NULL;
        }
    }
    PyObject *out = PyTuple_Pack(2, tp, Py_None);
    Py_DECREF(tp);
    return out;
}

/* The answer for the 55 bytes at ``p`` of ``value``: this request's traceparent (str, or
   bytes when ``as_bytes``) and the caller's trace id; ``slow`` for any other shape. */
static PyObject *
answer(PyObject *value, const unsigned char *p, int as_bytes, PyObject *slow)
{
    int ok = check(p);
    if (ok == 0) {
        return PyObject_CallOneArg(slow, value);
    }
    if (ok < 0) {
        return fresh_pair(as_bytes);
    }
    PyObject *sp = span();
    if (sp == NULL) {
        return NULL;
    }
    PyObject *tp = as_bytes ? PyBytes_FromStringAndSize(NULL, 55) : PyUnicode_New(55, 127);
    PyObject *trace = PyUnicode_New(32, 127);
    PyObject *out = PyTuple_New(2);
    if (tp == NULL || trace == NULL || out == NULL) {
        Py_DECREF(sp);
        Py_XDECREF(tp);
        Py_XDECREF(trace);
        Py_XDECREF(out);
        return NULL;
    }
    build(as_bytes ? PyBytes_AS_STRING(tp) : PyUnicode_DATA(tp), p, sp);
    memcpy(PyUnicode_DATA(trace), p + 3, 32);
    Py_DECREF(sp);
    PyTuple_SET_ITEM(out, 0, tp);
    PyTuple_SET_ITEM(out, 1, trace);
    return out;
}

static PyObject *
continued(PyObject *module, PyObject *value)
{
    if (!PyUnicode_CheckExact(value) || !PyUnicode_IS_COMPACT_ASCII(value)
        || PyUnicode_GET_LENGTH(value) != 55) {
        return PyObject_CallOneArg(slow_str, value);
    }
    return answer(value, PyUnicode_DATA(value), 0, slow_str);
}

static PyObject *
continued_bytes(PyObject *module, PyObject *value)
{
    if (!PyBytes_CheckExact(value) || PyBytes_GET_SIZE(value) != 55) {
        return PyObject_CallOneArg(slow_bytes, value);
    }
    return answer(value, (const unsigned char *)PyBytes_AS_STRING(value), 1, slow_bytes);
}

static PyObject *
bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "bind(popleft, next_span, fresh, continued, continued_bytes)");
        return NULL;
    }
    PyObject **slots[5] = {&popleft, &next_span, &fresh, &slow_str, &slow_bytes};
    for (int i = 0; i < 5; i++) {
        if (!PyCallable_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "bind() takes five callables");
            return NULL;
        }
    }
    for (int i = 0; i < 5; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*slots[i], args[i]);
    }
    Py_RETURN_NONE;
}

static PyObject *
unbound(PyObject *module, PyObject *value)
{
    PyErr_SetString(PyExc_RuntimeError, "instrument.core._trace.bind() was not called");
    return NULL;
}

static PyObject *
continued_checked(PyObject *module, PyObject *value)
{
    return popleft == NULL ? unbound(module, value) : continued(module, value);
}

static PyObject *
continued_bytes_checked(PyObject *module, PyObject *value)
{
    return popleft == NULL ? unbound(module, value) : continued_bytes(module, value);
}

static PyMethodDef methods[] = {
    {"continued", continued_checked, METH_O,
     "continued(value: str) -> (traceparent, caller's trace id | None), as trace.continued."},
    {"continued_bytes", continued_bytes_checked, METH_O,
     "continued_bytes(value: bytes) -> (traceparent, trace id | None), as"
     " trace.continued_bytes."},
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(popleft, next_span, fresh, continued, continued_bytes): trace.py's own."},
    {NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "instrument.core._trace",
    .m_doc = "Continuing an incoming traceparent, compiled (see trace.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__trace(void)
{
    for (const char *c = "0123456789abcdef"; *c; c++) {
        hex[(unsigned char)*c] = 1;
    }
    return PyModule_Create(&module);
}
