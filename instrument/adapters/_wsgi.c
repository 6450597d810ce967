/* The WSGI middleware's per-request exchange, compiled: start_response, the counting
 * write and close (the request's sample into the recorder's buffer).
 *
 * Like its Python twin in wsgi.py (the reference, and the fallback without a compiler
 * or with INSTRUMENT_NATIVE=false), it is a list: a body the app hands over whole is
 * moved into it and the server iterates it natively, then calls close(). Streamed
 * bodies go through wsgi._stream, which calls close() when they end.
 * tests/test_wsgi_native.py holds the two to the same samples and headers.
 */
#include "_record.h"
#include "../core/_traceparent.h"
#include <structmember.h>

/* the constructor's ``ids`` flags: the request id on, trace context on (settings) */
#define IDS_RID 1
#define IDS_TRACE 2

static PyObject *s_http_traceparent, *s_traceparent, *s_rid_header, *s_counting_write;
static PyObject *s_path_info, *s_query_string, *s_remote_addr, *s_user_agent, *s_method;
static PyObject *s_n, *str500, *str5, *s_http_x_request_id, *str_empty;
/* bound once by wsgi.py (bind(), bind_trace()) */
static Sink sink;
static Trace trace;
static PyObject *ended, *reset, *set, *route_key, *exc_key, *kind_http;

typedef struct {
    PyListObject list;
    PyObject *sr;      /* the server's start_response */
    PyObject *w;       /* the write callable it returned */
    PyObject *env;
    PyObject *exc;
    PyObject *inp;
    PyObject *rid;
    PyObject *route;
    PyObject *status;
    PyObject *tok;
    PyObject *tp;
    Py_ssize_t rb;
    double t0;
    double tf;
    char done;
    char announce;  /* the response carries tp: 1 yes, 0 no, -1 asked of env at the time */
} Exchange;

static PyObject *
env_get(PyObject *env, PyObject *key)
{
    PyObject *v;
    if (PyDict_CheckExact(env)) {
        v = PyDict_GetItemWithError(env, key);
        if (v == NULL) {
            if (PyErr_Occurred()) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
        Py_INCREF(v);
        return v;
    }
    v = PyObject_CallMethod(env, "get", "O", key);
    return v;
}

/* start_response(status, headers, exc_info=None): the request id and traceparent added */
static PyObject *
Exchange_start_response(Exchange *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "start_response(status, headers, exc_info=None)");
        return NULL;
    }
    if (self->sr == NULL || self->env == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_sr");
        return NULL;
    }
    PyObject *status = args[0], *headers = args[1];
    PyObject *exc_info = nargs == 3 ? args[2] : Py_None;
    Py_INCREF(status);
    Py_XSETREF(self->status, status);
    PyObject *rid = self->rid != NULL ? self->rid : Py_None;
    PyObject *tp = self->tp != NULL ? self->tp : Py_None;
    int with_tp = PyObject_IsTrue(tp);
    if (with_tp < 0) {
        return NULL;
    }
    if (with_tp && self->announce >= 0) {  /* known since the constructor */
        with_tp = self->announce;
    }
    else if (with_tp) {  /* a trace this request started itself is not announced */
        int has = PySequence_Contains(self->env, s_http_traceparent);
        if (has < 0) {
            return NULL;
        }
        with_tp = has;
    }
    PyObject *out;
    if (rid != Py_None || with_tp) {  /* a new list: the app may reuse its headers list */
        out = PySequence_List(headers);
        if (out == NULL) {
            return NULL;
        }
        if (rid != Py_None) {
            PyObject *pair = PyTuple_Pack(2, s_rid_header, rid);
            if (pair == NULL || PyList_Append(out, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(pair);
        }
        if (with_tp) {
            PyObject *pair = PyTuple_Pack(2, s_traceparent, tp);
            if (pair == NULL || PyList_Append(out, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(pair);
        }
    }
    else {
        out = headers;
        Py_INCREF(out);
    }
    int truthy = PyObject_IsTrue(exc_info);
    PyObject *w = truthy < 0 ? NULL
        : truthy ? PyObject_CallFunctionObjArgs(self->sr, status, out, exc_info, NULL)
                 : PyObject_CallFunctionObjArgs(self->sr, status, out, NULL);
    Py_DECREF(out);
    if (w == NULL) {
        return NULL;
    }
    Py_XSETREF(self->w, w);
    return PyObject_GetAttr((PyObject *)self, s_counting_write);
}

static PyObject *
Exchange_counting_write(Exchange *self, PyObject *data)
{
    Py_ssize_t n = PyObject_Size(data);
    if (n < 0) {
        return NULL;
    }
    self->rb += n;
    if (!self->tf) {
        double t = sink_now(&sink);
        if (t == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        self->tf = t;
    }
    if (self->w == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_w");
        return NULL;
    }
    return PyObject_CallOneArg(self->w, data);
}

/* the request's context made current is undone: reset, or None when it cannot be */
static int
undo_context(Exchange *self)
{
    PyObject *tok = self->tok;
    if (tok == NULL || tok == Py_None) {
        return 0;
    }
    PyObject *r = PyObject_CallOneArg(reset, tok);
    if (r == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)
            && !PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            return -1;
        }
        PyErr_Clear();  /* closed from another context, or twice */
        r = PyObject_CallOneArg(set, Py_None);
        if (r == NULL) {
            return -1;
        }
    }
    Py_DECREF(r);
    return 0;
}

static PyObject *
details(Exchange *self, PyObject *env)
{
    PyObject *vals[5] = {NULL, NULL, NULL, NULL, NULL};
    PyObject *keys[4] = {s_path_info, s_query_string, s_remote_addr, s_user_agent};
    for (int i = 0; i < 4; i++) {
        if ((vals[i] = env_get(env, keys[i])) == NULL) {
            for (int j = 0; j < i; j++) {
                Py_DECREF(vals[j]);
            }
            return NULL;
        }
    }
    PyObject *out = PyTuple_Pack(7, self->done ? Py_False : Py_True,
                                 self->rid != NULL ? self->rid : Py_None,
                                 vals[0], vals[1], vals[2], vals[3],
                                 self->tp != NULL ? self->tp : Py_None);
    for (int j = 0; j < 4; j++) {
        Py_DECREF(vals[j]);
    }
    return out;
}

/* Python's ``status >= "5"`` for the status line (a str, as WSGI asks): 1, 0 or -1 */
static int
failing_status(PyObject *status)
{
    if (PyUnicode_CheckExact(status)) {
        return PyUnicode_GET_LENGTH(status) > 0 && PyUnicode_READ_CHAR(status, 0) >= '5';
    }
    return PyObject_RichCompareBool(status, str5, Py_GE);
}

static PyObject *
Exchange_close(Exchange *self, PyObject *unused)
{
    if (!sink_bound(&sink)) {
        return NULL;
    }
    double t1 = sink_now(&sink);
    if (t1 == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *r = PyIter_Next(ended);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    if (undo_context(self) < 0) {
        return NULL;
    }
    if (self->env == NULL || self->status == NULL) {
        PyErr_SetString(PyExc_AttributeError, "env");
        return NULL;
    }
    Py_ssize_t rb = self->rb;
    Py_ssize_t chunks = PyList_GET_SIZE(self);
    for (Py_ssize_t i = 0; i < chunks; i++) {  /* a body handed over whole: sized here */
        PyObject *chunk = PyList_GET_ITEM(self, i);
        Py_ssize_t n = PyBytes_CheckExact(chunk) ? PyBytes_GET_SIZE(chunk) : PyObject_Size(chunk);
        if (n < 0) {
            return NULL;
        }
        rb += n;
    }
    PyObject *env = self->env;
    Py_INCREF(env);
    PyObject *route = env_get(env, route_key);
    PyObject *disc = NULL, *method = NULL, *excv = NULL, *status = NULL, *sample = NULL;
    PyObject *t0o = NULL, *t1o = NULL, *tfo = NULL, *qbo = NULL, *rbo = NULL;
    int ok = -1;
    if (route == NULL) {
        goto done;
    }
    int truthy = PyObject_IsTrue(route);
    if (truthy < 0) {
        goto done;
    }
    if (!truthy) {  /* env.get(ROUTE_KEY) or self.route or env.get("PATH_INFO") */
        Py_DECREF(route);
        route = self->route != NULL ? self->route : Py_None;
        Py_INCREF(route);
        if ((truthy = PyObject_IsTrue(route)) < 0) {
            goto done;
        }
        if (!truthy) {
            Py_SETREF(route, env_get(env, s_path_info));
            if (route == NULL) {
                goto done;
            }
        }
    }
    PyObject *exc = self->exc != NULL ? self->exc : Py_None;
    Py_INCREF(exc);
    int failed = exc == Py_None ? 0 : PyObject_IsTrue(exc);
    if (failed < 0) {
        Py_DECREF(exc);
        goto done;
    }
    if (failed) {  /* the exception itself goes to the flusher (its group); no cycle here */
        status = str500;
        Py_INCREF(status);
        Py_INCREF(Py_None);
        Py_XSETREF(self->exc, Py_None);
    }
    else {
        status = self->status;
        Py_INCREF(status);
    }
    int candidate = sink_slow_candidate(&sink, self->t0, t1, route);
    if (candidate == 0) {
        candidate = failing_status(status);
    }
    if (candidate < 0) {
        Py_DECREF(exc);
        goto done;
    }
    disc = candidate ? details(self, env) : (self->done ? Py_False : Py_True);
    if (disc == NULL) {
        Py_DECREF(exc);
        goto done;
    }
    if (!candidate) {
        Py_INCREF(disc);
    }
    method = env_get(env, s_method);
    if (method == NULL) {
        Py_DECREF(exc);
        goto done;
    }
    if (failed) {
        excv = exc;
    }
    else {
        Py_DECREF(exc);
        if ((excv = env_get(env, exc_key)) == NULL) {
            goto done;
        }
    }
    if (self->inp != NULL && self->inp != Py_None) {
        qbo = PyObject_GetAttr(self->inp, s_n);
    }
    else {
        qbo = PyLong_FromLong(0);
    }
    t0o = PyFloat_FromDouble(self->t0);
    t1o = PyFloat_FromDouble(t1);
    tfo = self->tf ? PyFloat_FromDouble(self->tf) : (Py_INCREF(t1o), t1o);
    rbo = PyLong_FromSsize_t(rb);
    sample = PyTuple_New(11);
    if (qbo == NULL || t0o == NULL || t1o == NULL || tfo == NULL || rbo == NULL
        || sample == NULL) {
        goto done;
    }
    PyObject *items[11] = {kind_http, t0o, t1o, tfo, route, method, status, qbo, rbo, excv, disc};
    for (int i = 0; i < 11; i++) {
        Py_INCREF(items[i]);
        PyTuple_SET_ITEM(sample, i, items[i]);
    }
    ok = sink_append(&sink, sample);
done:
    Py_DECREF(env);
    Py_XDECREF(route);
    Py_XDECREF(disc);
    Py_XDECREF(method);
    Py_XDECREF(excv);
    Py_XDECREF(status);
    Py_XDECREF(t0o);
    Py_XDECREF(t1o);
    Py_XDECREF(tfo);
    Py_XDECREF(qbo);
    Py_XDECREF(rbo);
    Py_XDECREF(sample);
    if (ok < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* env[key] into *value (a new reference): 1 when present, 0 when not, -1 on an error */
static int
env_lookup(PyObject *env, PyObject *key, PyObject **value)
{
    if (PyDict_CheckExact(env)) {
        *value = PyDict_GetItemWithError(env, key);
        if (*value == NULL) {
            return PyErr_Occurred() ? -1 : 0;
        }
        Py_INCREF(*value);
        return 1;
    }
    int has = PySequence_Contains(env, key);
    if (has <= 0) {
        return has;
    }
    *value = PyObject_GetItem(env, key);
    return *value == NULL ? -1 : 1;
}

/* What the Python twin's middleware lines set: ``tp`` (continued from an incoming
   traceparent, None until something starts one, "" with trace context off) and ``rid``
   (the caller's valid X-Request-ID, else the caller's trace id, else one minted ahead). */
static int
assign_ids(Exchange *self, PyObject *env, long ids)
{
    PyObject *caller = NULL, *value = NULL;
    if (!(ids & IDS_TRACE)) {
        self->tp = Py_NewRef(str_empty);
        self->announce = 0;
    }
    else {
        int has = env_lookup(env, s_http_traceparent, &value);
        if (has < 0) {
            return -1;
        }
        self->announce = (char)has;
        if (has) {
            int rc = tp_continue(&trace, value, 0, &self->tp, &caller);
            Py_DECREF(value);
            if (rc < 0) {
                return -1;
            }
        }
        else {
            self->tp = Py_NewRef(Py_None);
        }
    }
    if (!(ids & IDS_RID)) {
        self->rid = Py_NewRef(Py_None);
        Py_XDECREF(caller);
        return 0;
    }
    PyObject *raw = env_get(env, s_http_x_request_id);
    int truthy = raw == NULL ? -1 : PyObject_IsTrue(raw);
    if (truthy >= 0) {
        self->rid = tp_request_id(&trace, truthy ? raw : NULL, caller);
    }
    Py_XDECREF(raw);
    Py_XDECREF(caller);
    return truthy < 0 || self->rid == NULL ? -1 : 0;
}

/* Exchange(environ, start_response, t0, route[, ids]): the fields the Python twin sets
   inline; with ``ids`` (IDS_* flags) also its ``tp`` and ``rid`` */
static PyObject *
Exchange_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *env = NULL, *sr = NULL, *t0 = NULL, *route = NULL, *ids = NULL;
    if (!PyArg_UnpackTuple(args, "Exchange", 0, 5, &env, &sr, &t0, &route, &ids)) {
        return NULL;
    }
    Exchange *self = (Exchange *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (t0 != NULL) {
        self->t0 = as_double(t0);
        if (self->t0 == -1.0 && PyErr_Occurred()) {
            Py_DECREF(self);
            return NULL;
        }
    }
    Py_XINCREF(env);
    Py_XINCREF(sr);
    self->env = env;
    self->sr = sr;
    self->route = route != NULL ? route : Py_None;
    Py_INCREF(self->route);
    self->status = str500;  /* until start_response: a request that never calls it failed */
    Py_INCREF(str500);
    self->exc = Py_None;
    Py_INCREF(Py_None);
    self->tok = Py_NewRef(Py_None);
    self->inp = Py_NewRef(Py_None);
    self->done = 1;
    self->announce = -1;
    if (ids != NULL) {
        long flags = PyLong_AsLong(ids);
        if ((flags == -1 && PyErr_Occurred()) || env == NULL
            || (trace.chunks == NULL && flags != 0)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_RuntimeError, env == NULL ? "Exchange(): no environ"
                                : "Exchange(): bind_trace() was not called");
            }
            Py_DECREF(self);
            return NULL;
        }
        if (assign_ids(self, env, flags) < 0) {
            Py_DECREF(self);
            return NULL;
        }
    }
    return (PyObject *)self;
}

static int
Exchange_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    return 0;  /* all done in __new__; list.__init__ would take the arguments for items */
}

static int
Exchange_traverse(Exchange *self, visitproc visit, void *arg)
{
    Py_VISIT(self->sr);
    Py_VISIT(self->w);
    Py_VISIT(self->env);
    Py_VISIT(self->exc);
    Py_VISIT(self->inp);
    Py_VISIT(self->rid);
    Py_VISIT(self->route);
    Py_VISIT(self->status);
    Py_VISIT(self->tok);
    Py_VISIT(self->tp);
    return PyList_Type.tp_traverse((PyObject *)self, visit, arg);
}

static void
clear_fields(Exchange *self)
{
    Py_CLEAR(self->sr);
    Py_CLEAR(self->w);
    Py_CLEAR(self->env);
    Py_CLEAR(self->exc);
    Py_CLEAR(self->inp);
    Py_CLEAR(self->rid);
    Py_CLEAR(self->route);
    Py_CLEAR(self->status);
    Py_CLEAR(self->tok);
    Py_CLEAR(self->tp);
}

static int
Exchange_clear(Exchange *self)
{
    clear_fields(self);
    return PyList_Type.tp_clear((PyObject *)self);
}

static void
Exchange_dealloc(Exchange *self)
{
    PyObject_GC_UnTrack(self);
    clear_fields(self);
    PyList_Type.tp_dealloc((PyObject *)self);  /* the items; then tp_free */
}

static PyMethodDef Exchange_methods[] = {
    {"start_response", (PyCFunction)(void (*)(void))Exchange_start_response, METH_FASTCALL,
     "The server's start_response with X-Request-ID (and a continued traceparent) added."},
    {"_counting_write", (PyCFunction)Exchange_counting_write, METH_O,
     "The write callable the app is given: counts bytes, stamps the first."},
    {"close", (PyCFunction)Exchange_close, METH_NOARGS,
     "The request ends: its sample into the recorder's buffer."},
    {NULL}
};

static PyMemberDef Exchange_members[] = {
    {"_sr", T_OBJECT_EX, offsetof(Exchange, sr), 0, NULL},
    {"_w", T_OBJECT_EX, offsetof(Exchange, w), 0, NULL},
    {"env", T_OBJECT_EX, offsetof(Exchange, env), 0, NULL},
    {"exc", T_OBJECT_EX, offsetof(Exchange, exc), 0, NULL},
    {"inp", T_OBJECT_EX, offsetof(Exchange, inp), 0, NULL},
    {"rid", T_OBJECT_EX, offsetof(Exchange, rid), 0, NULL},
    {"route", T_OBJECT_EX, offsetof(Exchange, route), 0, NULL},
    {"status", T_OBJECT_EX, offsetof(Exchange, status), 0, NULL},
    {"tok", T_OBJECT_EX, offsetof(Exchange, tok), 0, NULL},
    {"tp", T_OBJECT_EX, offsetof(Exchange, tp), 0, NULL},
    {"rb", T_PYSSIZET, offsetof(Exchange, rb), 0, NULL},
    {"t0", T_DOUBLE, offsetof(Exchange, t0), 0, NULL},
    {"tf", T_DOUBLE, offsetof(Exchange, tf), 0, NULL},
    {"done", T_BOOL, offsetof(Exchange, done), 0, NULL},
    {NULL}
};

static PyTypeObject ExchangeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "instrument.adapters._wsgi.Exchange",
    .tp_doc = "One WSGI request: start_response, its body (a list) and close (subclassed in"
              " wsgi.py).",
    .tp_basicsize = sizeof(Exchange),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = Exchange_new,
    .tp_init = Exchange_init,
    .tp_dealloc = (destructor)Exchange_dealloc,
    .tp_traverse = (traverseproc)Exchange_traverse,
    .tp_clear = (inquiry)Exchange_clear,
    .tp_methods = Exchange_methods,
    .tp_members = Exchange_members,
};

static PyObject *
bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "bind(recorder, extend, until, default, cuts, ended,"
                        " reset, set, route_key, exc_key, kind_http)");
        return NULL;
    }
    if (sink_bind(&sink, args) < 0) {
        return NULL;
    }
    PyObject **slots[6] = {&ended, &reset, &set, &route_key, &exc_key, &kind_http};
    for (int i = 0; i < 6; i++) {
        Py_INCREF(args[5 + i]);
        Py_XSETREF(*slots[i], args[5 + i]);
    }
    Py_RETURN_NONE;
}

static PyObject *
bind_trace(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    return tp_bind_trace(&trace, args, nargs);
}

static PyObject *
forget_spans(PyObject *module, PyObject *unused)
{
    return tp_forget_spans(&trace);
}

static PyMethodDef module_methods[] = {
    {"bind_trace", (PyCFunction)(void (*)(void))bind_trace, METH_FASTCALL,
     "bind_trace(span_chunk, fresh, continued, ids_popleft, new_id, incoming_id): what"
     " the constructor's ids step calls."},
    {"forget_spans", forget_spans, METH_NOARGS,
     "forget_spans(): the span ids in hand dropped; the next starts a new chunk."},
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(recorder, extend, until, default, cuts, ended, reset, set, route_key, exc_key,"
     " kind_http): where close() records."},
    {NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "instrument.adapters._wsgi",
    .m_doc = "The WSGI middleware's exchange, compiled (see wsgi.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC
PyInit__wsgi(void)
{
    INTERN(s_http_traceparent, "HTTP_TRACEPARENT");
    INTERN(s_traceparent, "traceparent");
    INTERN(s_rid_header, "X-Request-ID");
    INTERN(s_counting_write, "_counting_write");
    INTERN(s_path_info, "PATH_INFO");
    INTERN(s_query_string, "QUERY_STRING");
    INTERN(s_remote_addr, "REMOTE_ADDR");
    INTERN(s_user_agent, "HTTP_USER_AGENT");
    INTERN(s_method, "REQUEST_METHOD");
    INTERN(s_n, "n");
    INTERN(str500, "500");
    INTERN(str5, "5");
    INTERN(s_http_x_request_id, "HTTP_X_REQUEST_ID");
    INTERN(str_empty, "");
    tp_init();
    ExchangeType.tp_base = &PyList_Type;
    if (sink_init(&sink) < 0 || PyType_Ready(&ExchangeType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Exchange", (PyObject *)&ExchangeType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
