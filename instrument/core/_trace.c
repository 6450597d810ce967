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
#include "_traceparent.h"

/* bound by trace.py (bind()): the str answers' and the bytes answers' (the same but ``slow``) */
static Trace t_str, t_bytes;

/* (traceparent, caller's trace id | None), the pair trace.continued returns */
static PyObject *
pair(Trace *t, PyObject *value, int as_bytes)
{
    PyObject *tp, *caller;
    if (tp_continue(t, value, as_bytes, &tp, &caller) < 0) {
        return NULL;
    }
    PyObject *out = PyTuple_Pack(2, tp, caller != NULL ? caller : Py_None);
    Py_DECREF(tp);
    Py_XDECREF(caller);
    return out;
}

static PyObject *
continued(PyObject *module, PyObject *value)
{
    return pair(&t_str, value, 0);
}

static PyObject *
continued_bytes(PyObject *module, PyObject *value)
{
    return pair(&t_bytes, value, 1);
}

static PyObject *
bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "bind(span_chunk, fresh, continued, continued_bytes)");
        return NULL;
    }
    PyObject *for_bytes[3] = {args[0], args[1], args[3]};
    if (tp_bind(&t_str, args, 3) < 0 || tp_bind(&t_bytes, for_bytes, 3) < 0) {
        return NULL;
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
    return t_str.chunks == NULL ? unbound(module, value) : continued(module, value);
}

static PyObject *
continued_bytes_checked(PyObject *module, PyObject *value)
{
    return t_str.chunks == NULL ? unbound(module, value) : continued_bytes(module, value);
}

static PyObject *
forget_spans(PyObject *module, PyObject *unused)
{
    tp_forget_spans(&t_str);
    return tp_forget_spans(&t_bytes);
}

static PyMethodDef methods[] = {
    {"continued", continued_checked, METH_O,
     "continued(value: str) -> (traceparent, caller's trace id | None), as trace.continued."},
    {"continued_bytes", continued_bytes_checked, METH_O,
     "continued_bytes(value: bytes) -> (traceparent, trace id | None), as"
     " trace.continued_bytes."},
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(span_chunk, fresh, continued, continued_bytes): trace.py's own."},
    {"forget_spans", forget_spans, METH_NOARGS,
     "forget_spans(): the span ids in hand dropped; the next starts a new chunk."},
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
    tp_init();
    return PyModule_Create(&module);
}
