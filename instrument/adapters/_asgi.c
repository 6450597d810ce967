/* The ASGI middleware's per-request exchange, compiled: its fields, its ``send``, and the
 * request's start and end (``begin``, ``run``, ``done``), so the middleware's coroutine
 * keeps only the await and the try around it.
 *
 * ``send`` runs two or three times a request, in the user's request path, and in
 * Python it is the largest part of what the middleware adds to a FastAPI route
 * (benchmarks/overhead.py). Here it reads the message, counts body bytes, adds the
 * response headers and hands back the server's own awaitable; the last body chunk
 * is wrapped in ``LastSend``, an awaitable that stamps the end time once the server
 * has taken the chunk, as the Python ``_send_last`` coroutine does, without a
 * coroutine frame. ``instrument/adapters/asgi.py`` keeps the pure-Python exchange as
 * the reference and the fallback (no compiler at install, or INSTRUMENT_NATIVE=false);
 * tests/test_asgi_native.py holds the two to the same behaviour.
 */
#include "_record.h"
#include "../core/_traceparent.h"
#include <structmember.h>

/* the constructor's ``ids`` flags: the request id on, trace context on (settings) */
#define IDS_RID 1
#define IDS_TRACE 2

static PyObject *s_type, *s_body, *s_more_body, *s_status, *s_headers;
static PyObject *s_kind_body, *s_kind_start, *s_kind_pathsend, *s_throw, *s_close;
static PyObject *b_rid_name, *b_tp_name, *b_ua_name, *empty_tuple, *int500;
static PyObject *s_path, *s_query_string, *s_client, *s_method;
static PyObject *s_route, *s_fastapi, *s_effective, *s_root_path, *s_empty;
/* where record() appends, bound once by asgi.py (bind()), and the names it uses */
static Sink sink;
static PyObject *exc_key, *kind_http, *bytes_empty;
/* what the constructor's ids step calls beyond its own lines (bind_trace()) */
static Trace trace;
/* bind_class(): the exchange class begin() builds, _Methods.receive, READERS, current */
static PyTypeObject *native_cls;
static PyObject *receive_func, *readers, *current_var;
static PyObject *s_started, *s_ended, *started_ctr, *ended_ctr;

typedef struct {
    PyObject_HEAD
    PyObject *receive;
    PyObject *send;
    PyObject *scope;
    PyObject *status;
    PyObject *rid;
    PyObject *tp;
    PyObject *in_rid;  /* the request's own x-request-id and traceparent values, or NULL */
    PyObject *in_tp;
    PyObject *how;    /* begin()'s: the middleware's (app, ids, resolve, templates) */
    PyObject *root0;  /* the scope's root_path as the request came (a Mount may change it) */
    PyObject *token;  /* the request context's token, while this request is current */
    Py_ssize_t qb;
    Py_ssize_t rb;
    double t0;
    double tf;
    double t_end;
    char disc;
} Exchange;

typedef struct {
    PyObject_HEAD
    Exchange *ex;
    PyObject *aw;  /* the server's awaitable */
    PyObject *it;  /* its iterator, once awaited */
} LastSend;

static PyTypeObject LastSendType;
static PyTypeObject ExchangeType;

/* message[key] (a new reference), NULL without an error when it is absent */
static PyObject *
get(PyObject *message, PyObject *key)
{
    PyObject *v;
    if (PyDict_CheckExact(message)) {
        v = PyDict_GetItemWithError(message, key);
        Py_XINCREF(v);
        return v;
    }
    v = PyObject_GetItem(message, key);
    if (v == NULL && PyErr_ExceptionMatches(PyExc_KeyError)) {
        PyErr_Clear();
    }
    return v;
}

/* 1 when str ``a`` equals the interned ``b``, 0 when not, -1 on an error */
static int
is(PyObject *a, PyObject *b)
{
    if (a == b) {
        return 1;
    }
    if (PyUnicode_CheckExact(a)) {
        return PyUnicode_Compare(a, b) == 0;
    }
    return PyObject_RichCompareBool(a, b, Py_EQ);
}

static PyObject *
last_send(Exchange *ex, PyObject *message)
{
    PyObject *aw = PyObject_CallOneArg(ex->send, message);
    if (aw == NULL) {
        return NULL;
    }
    LastSend *ls = PyObject_GC_New(LastSend, &LastSendType);
    if (ls == NULL) {
        Py_DECREF(aw);
        return NULL;
    }
    Py_INCREF(ex);
    ls->ex = ex;
    ls->aw = aw;
    ls->it = NULL;
    PyObject_GC_Track(ls);
    return (PyObject *)ls;
}

/* the response's headers with the request id and the traceparent added: a new list */
static int
add_headers(Exchange *self, PyObject *message, int with_rid, int with_tp)
{
    PyObject *headers = get(message, s_headers);
    if (headers == NULL && PyErr_Occurred()) {
        return -1;
    }
    PyObject *list = PySequence_List(headers != NULL ? headers : empty_tuple);
    Py_XDECREF(headers);
    if (list == NULL) {
        return -1;
    }
    if (with_rid) {
        PyObject *enc = PyUnicode_CheckExact(self->rid)
            ? PyUnicode_AsUTF8String(self->rid)
            : PyObject_CallMethod(self->rid, "encode", NULL);
        if (enc == NULL) {
            goto fail;
        }
        PyObject *pair = PyTuple_Pack(2, b_rid_name, enc);
        Py_DECREF(enc);
        if (pair == NULL || PyList_Append(list, pair) < 0) {
            Py_XDECREF(pair);
            goto fail;
        }
        Py_DECREF(pair);
    }
    if (with_tp) {
        PyObject *pair = PyTuple_Pack(2, b_tp_name, self->tp);
        if (pair == NULL || PyList_Append(list, pair) < 0) {
            Py_XDECREF(pair);
            goto fail;
        }
        Py_DECREF(pair);
    }
    if (PyObject_SetItem(message, s_headers, list) < 0) {
        goto fail;
    }
    Py_DECREF(list);
    return 0;
fail:
    Py_DECREF(list);
    return -1;
}

static PyObject *
Exchange_send(Exchange *self, PyObject *message)
{
    if (self->send == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_send");
        return NULL;
    }
    PyObject *kind = PyObject_GetItem(message, s_type);
    if (kind == NULL) {
        return NULL;
    }
    int r = is(kind, s_kind_body);
    if (r > 0) {
        Py_DECREF(kind);
        PyObject *body = get(message, s_body);
        if (body != NULL) {
            Py_ssize_t n;
            if (PyBytes_CheckExact(body)) {
                n = PyBytes_GET_SIZE(body);
            }
            else {
                int t = PyObject_IsTrue(body);
                n = t > 0 ? PyObject_Size(body) : t;
            }
            Py_DECREF(body);
            if (n < 0) {
                return NULL;
            }
            self->rb += n;
        }
        else if (PyErr_Occurred()) {
            return NULL;
        }
        PyObject *more = get(message, s_more_body);
        if (more != NULL) {
            int t = more == Py_False ? 0 : PyObject_IsTrue(more);
            Py_DECREF(more);
            if (t < 0) {
                return NULL;
            }
            if (t) {
                return PyObject_CallOneArg(self->send, message);
            }
        }
        else if (PyErr_Occurred()) {
            return NULL;
        }
        return last_send(self, message);
    }
    if (r == 0) {
        r = is(kind, s_kind_start);
        if (r > 0) {
            Py_DECREF(kind);
            PyObject *status = PyObject_GetItem(message, s_status);
            if (status == NULL) {
                return NULL;
            }
            Py_XSETREF(self->status, status);
            PyObject *tp = self->tp;
            int with_tp = tp != NULL && PyBytes_CheckExact(tp) && PyBytes_GET_SIZE(tp) > 0;
            int with_rid = self->rid != NULL && self->rid != Py_None;
            if ((with_rid || with_tp) && add_headers(self, message, with_rid, with_tp) < 0) {
                return NULL;
            }
            double t = sink_now(&sink);
            if (t == -1.0 && PyErr_Occurred()) {
                return NULL;
            }
            self->tf = t;
            return PyObject_CallOneArg(self->send, message);
        }
    }
    if (r == 0) {
        r = is(kind, s_kind_pathsend);
        if (r > 0) {
            Py_DECREF(kind);
            return last_send(self, message);
        }
    }
    Py_DECREF(kind);
    if (r < 0) {
        return NULL;
    }
    return PyObject_CallOneArg(self->send, message);
}

static PyMethodDef send_def = {
    "send", (PyCFunction)Exchange_send, METH_O,
    "Count and pass on one message; the last body chunk's awaitable stamps the end time."};

/* ---- the end of a request: its sample, into the recorder's buffer ---- */

/* scope.get(key): a new reference, None when absent */
static PyObject *
scope_get(PyObject *scope, PyObject *key)
{
    PyObject *v = get(scope, key);
    if (v == NULL && !PyErr_Occurred()) {
        Py_RETURN_NONE;
    }
    return v;
}

/* the first user-agent header's value as bytes, None without one (asgi._header) */
static PyObject *
user_agent(PyObject *scope)
{
    PyObject *headers = PyObject_GetItem(scope, s_headers);
    if (headers == NULL) {
        return NULL;
    }
    PyObject *found = NULL;
    PyObject *it = PyObject_GetIter(headers);
    Py_DECREF(headers);
    if (it == NULL) {
        return NULL;
    }
    PyObject *pair;
    while (found == NULL && (pair = PyIter_Next(it)) != NULL) {
        PyObject *k, *v;
        if (PyTuple_CheckExact(pair) && PyTuple_GET_SIZE(pair) == 2) {
            k = PyTuple_GET_ITEM(pair, 0);
            v = PyTuple_GET_ITEM(pair, 1);
            Py_INCREF(k);
            Py_INCREF(v);
        }
        else {
            PyObject *seq = PySequence_Tuple(pair);
            if (seq == NULL || PyTuple_GET_SIZE(seq) != 2) {
                if (seq != NULL) {
                    PyErr_SetString(PyExc_ValueError, "a header is not a (name, value) pair");
                }
                Py_XDECREF(seq);
                Py_DECREF(pair);
                Py_DECREF(it);
                return NULL;
            }
            k = PyTuple_GET_ITEM(seq, 0);
            v = PyTuple_GET_ITEM(seq, 1);
            Py_INCREF(k);
            Py_INCREF(v);
            Py_DECREF(seq);
        }
        Py_DECREF(pair);
        int eq = PyObject_RichCompareBool(k, b_ua_name, Py_EQ);
        Py_DECREF(k);
        if (eq < 0) {
            Py_DECREF(v);
            Py_DECREF(it);
            return NULL;
        }
        if (eq) {
            found = PyBytes_FromObject(v);
            Py_DECREF(v);
            if (found == NULL) {
                Py_DECREF(it);
                return NULL;
            }
        }
        else {
            Py_DECREF(v);
        }
    }
    Py_DECREF(it);
    if (found == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return found;
}

/* a candidate exemplar's details, as the pure-Python middleware builds them */
static PyObject *
details(Exchange *self)
{
    PyObject *scope = self->scope;
    PyObject *path = scope_get(scope, s_path);
    PyObject *query = path ? scope_get(scope, s_query_string) : NULL;
    PyObject *client = query ? scope_get(scope, s_client) : NULL;
    PyObject *ua = client ? user_agent(scope) : NULL;
    PyObject *out = NULL;
    if (ua != NULL) {
        out = PyTuple_Pack(7, self->disc ? Py_True : Py_False,
                           self->rid ? self->rid : Py_None, path, query, client, ua,
                           self->tp ? self->tp : Py_None);
    }
    Py_XDECREF(path);
    Py_XDECREF(query);
    Py_XDECREF(client);
    Py_XDECREF(ua);
    return out;
}

/* The route's template from RouteResolver's cache (routes.py), for the common case: the
 * router left its route in the scope, its template is cached, no Mount moved root_path.
 * A new reference; NULL without an exception when the resolver must be asked. */
static PyObject *
cached_route(PyObject *scope, PyObject *templates, PyObject *root0)
{
    if (!PyDict_CheckExact(scope) || !PyDict_CheckExact(templates)) {
        return NULL;
    }
    PyObject *route = PyDict_GetItemWithError(scope, s_route);
    if (route == NULL || route == Py_None) {
        return NULL;
    }
    PyObject *obj = route;
    PyObject *fastapi = PyDict_GetItemWithError(scope, s_fastapi);
    if (fastapi != NULL && fastapi != Py_None) {
        if (!PyDict_CheckExact(fastapi)) {
            return NULL;
        }
        PyObject *ctx = PyDict_GetItemWithError(fastapi, s_effective);
        if (ctx != NULL && ctx != Py_None) {
            obj = ctx;
        }
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *key = PyLong_FromVoidPtr(obj);  /* id(obj) */
    if (key == NULL) {
        return NULL;
    }
    PyObject *hit = PyDict_GetItemWithError(templates, key);
    Py_DECREF(key);
    if (hit == NULL || !PyTuple_CheckExact(hit) || PyTuple_GET_SIZE(hit) != 2
        || PyTuple_GET_ITEM(hit, 0) != obj) {
        return NULL;
    }
    PyObject *root = PyDict_GetItemWithError(scope, s_root_path);
    if (root == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        root = s_empty;
    }
    if (root != root0) {
        int same = PyObject_RichCompareBool(root, root0, Py_EQ);
        if (same != 1) {  /* a Mount's prefix to add (or an error): the resolver's work */
            return NULL;
        }
    }
    PyObject *template = PyTuple_GET_ITEM(hit, 1);
    Py_INCREF(template);
    return template;
}

static PyObject *
record(Exchange *self, PyObject *t0, PyObject *t1, PyObject *exc, PyObject *route)
{
    int failed = exc == Py_None ? 0 : PyObject_IsTrue(exc);
    if (failed < 0) {
        return NULL;
    }
    PyObject *status = failed ? int500 : self->status;
    double d0 = as_double(t0), d1 = as_double(t1);
    if ((d0 == -1.0 || d1 == -1.0) && PyErr_Occurred()) {
        return NULL;
    }
    /* a candidate exemplar: past the minute's cut-offs, slower than the route's cut, or
       failing (see exemplars.py); only a candidate carries its details */
    int candidate = sink_slow_candidate(&sink, d0, d1, route);
    if (candidate < 0) {
        return NULL;
    }
    if (!candidate) {
        if (PyLong_CheckExact(status)) {
            int overflow;
            long v = PyLong_AsLongAndOverflow(status, &overflow);
            candidate = overflow > 0 || (!overflow && v >= 500);
        }
        else {
            candidate = PyObject_RichCompareBool(status, int500, Py_GE);
        }
        if (candidate < 0) {
            return NULL;
        }
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *disc;
    if (candidate) {
        disc = details(self);
        if (disc == NULL) {
            return NULL;
        }
    }
    else {
        disc = self->disc ? Py_True : Py_False;
        Py_INCREF(disc);
    }
    PyObject *method = PyObject_GetItem(self->scope, s_method);
    if (method == NULL) {
        Py_DECREF(disc);
        return NULL;
    }
    PyObject *excv;
    if (failed) {
        excv = exc;
        Py_INCREF(exc);
    }
    else if ((excv = scope_get(self->scope, exc_key)) == NULL) {
        Py_DECREF(method);
        Py_DECREF(disc);
        return NULL;
    }
    PyObject *sample = PyTuple_New(11);
    PyObject *tf = PyFloat_FromDouble(self->tf);
    PyObject *qb = PyLong_FromSsize_t(self->qb);
    PyObject *rb = PyLong_FromSsize_t(self->rb);
    if (sample == NULL || tf == NULL || qb == NULL || rb == NULL) {
        Py_XDECREF(sample);
        Py_XDECREF(tf);
        Py_XDECREF(qb);
        Py_XDECREF(rb);
        Py_DECREF(method);
        Py_DECREF(excv);
        Py_DECREF(disc);
        return NULL;
    }
    Py_INCREF(kind_http);
    Py_INCREF(t0);
    Py_INCREF(t1);
    Py_INCREF(route);
    Py_INCREF(status);
    PyTuple_SET_ITEM(sample, 0, kind_http);
    PyTuple_SET_ITEM(sample, 1, t0);
    PyTuple_SET_ITEM(sample, 2, t1);
    PyTuple_SET_ITEM(sample, 3, tf);
    PyTuple_SET_ITEM(sample, 4, route);
    PyTuple_SET_ITEM(sample, 5, method);
    PyTuple_SET_ITEM(sample, 6, status);
    PyTuple_SET_ITEM(sample, 7, qb);
    PyTuple_SET_ITEM(sample, 8, rb);
    PyTuple_SET_ITEM(sample, 9, excv);
    PyTuple_SET_ITEM(sample, 10, disc);
    int r = sink_append(&sink, sample);
    Py_DECREF(sample);
    if (r < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* 1 when bytes ``name`` is the ``len``-byte lowercase header name ``want`` */
static int
named(PyObject *name, const char *want, Py_ssize_t len)
{
    if (PyBytes_CheckExact(name)) {
        return PyBytes_GET_SIZE(name) == len && memcmp(PyBytes_AS_STRING(name), want, len) == 0;
    }
    PyObject *w = PyBytes_FromStringAndSize(want, len);
    if (w == NULL) {
        return -1;
    }
    int eq = PyObject_RichCompareBool(name, w, Py_EQ);
    Py_DECREF(w);
    return eq;
}

/* One pass over the request headers for the first x-request-id and traceparent values
   (the middleware's ``in_rid`` and ``in_tp``): what the Python twin finds with two
   list searches. Servers give (name, value) tuples; any other pair is read too. */
static int
find_ids(Exchange *self, PyObject *scope)
{
    PyObject *headers = PyObject_GetItem(scope, s_headers);
    if (headers == NULL) {
        return -1;
    }
    PyObject *seq = PySequence_Fast(headers, "the scope's headers are not a sequence");
    Py_DECREF(headers);
    if (seq == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    int rc = 0;
    for (Py_ssize_t i = 0; i < n && (self->in_rid == NULL || self->in_tp == NULL); i++) {
        PyObject *pair = items[i], *name, *value;
        if (PyTuple_CheckExact(pair) && PyTuple_GET_SIZE(pair) == 2) {
            name = PyTuple_GET_ITEM(pair, 0);
            value = PyTuple_GET_ITEM(pair, 1);
        }
        else if (PyList_CheckExact(pair) && PyList_GET_SIZE(pair) == 2) {
            name = PyList_GET_ITEM(pair, 0);
            value = PyList_GET_ITEM(pair, 1);
        }
        else {
            continue;  /* not a (name, value) pair: the Python twin's searches skip it too */
        }
        /* quick refusal on the length: almost every header is neither */
        if (PyBytes_CheckExact(name) && PyBytes_GET_SIZE(name) != 12
            && PyBytes_GET_SIZE(name) != 11) {
            continue;
        }
        int is_rid = self->in_rid == NULL ? named(name, "x-request-id", 12) : 0;
        if (is_rid < 0) {
            rc = -1;
            break;
        }
        if (is_rid) {
            Py_INCREF(value);
            self->in_rid = value;
            continue;
        }
        int is_tp = self->in_tp == NULL ? named(name, "traceparent", 11) : 0;
        if (is_tp < 0) {
            rc = -1;
            break;
        }
        if (is_tp) {
            Py_INCREF(value);
            self->in_tp = value;
        }
    }
    Py_DECREF(seq);
    return rc;
}

/* What the Python twin's middleware lines set from the two headers: ``tp`` (continued
   from an incoming traceparent, None until something starts one, b"" with trace context
   off) and ``rid`` (the caller's checked x-request-id, else the caller's trace id, else
   one minted ahead). */
static int
assign_ids(Exchange *self, long ids)
{
    PyObject *caller = NULL;
    if (!(ids & IDS_TRACE)) {
        self->tp = Py_NewRef(bytes_empty);
    }
    else if (self->in_tp != NULL) {
        if (tp_continue(&trace, self->in_tp, 1, &self->tp, &caller) < 0) {
            return -1;
        }
    }
    else {
        self->tp = Py_NewRef(Py_None);
    }
    if (!(ids & IDS_RID)) {
        self->rid = Py_NewRef(Py_None);
    }
    else {
        self->rid = tp_request_id(&trace, self->in_rid, caller);
    }
    Py_XDECREF(caller);
    return self->rid == NULL ? -1 : 0;
}

/* Exchange(scope, receive, send[, ids]): the fields the Python twin sets inline, the two id
   headers found; with ``ids`` (IDS_* flags) also its ``tp`` and ``rid`` */
static PyObject *
Exchange_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *scope = NULL, *receive = NULL, *send = NULL, *ids = NULL;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Exchange(scope, receive, send) takes no keywords");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Exchange", 0, 4, &scope, &receive, &send, &ids)) {
        return NULL;
    }
    Exchange *self = (Exchange *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_XINCREF(scope);
    Py_XINCREF(receive);
    Py_XINCREF(send);
    self->scope = scope;
    self->receive = receive;
    self->send = send;
    Py_INCREF(int500);
    self->status = int500;  /* until the response starts: a request that never does failed */
    if (scope != NULL && find_ids(self, scope) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    if (ids != NULL) {
        long flags = PyLong_AsLong(ids);
        if ((flags == -1 && PyErr_Occurred()) || (trace.chunks == NULL && flags != 0)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_RuntimeError, "Exchange(): bind_trace() was not called");
            }
            Py_DECREF(self);
            return NULL;
        }
        if (assign_ids(self, flags) < 0) {
            Py_DECREF(self);
            return NULL;
        }
    }
    return (PyObject *)self;
}

/* ---- begin(), run(), done(): the middleware's request, start to sample ----
 *
 * The Python twin's lines in InstrumentMiddleware.__call__ (ids, the request made current,
 * t0, the started count, the app's call with the wrapped receive and send, and the finally's
 * end time, ended count, context reset and sample), compiled: the coroutine keeps only the
 * await and its try, which are what must stay Python (the exception passes through it). */

/* next(counter): the in-flight gauge's itertools.count (recorder.started, .ended) */
static int
bump(PyObject *counter)
{
    if (counter == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the compiled exchange's bind() was not called");
        return -1;
    }
    PyObject *n = Py_TYPE(counter)->tp_iternext(counter);
    if (n == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "the in-flight count is exhausted");
        }
        return -1;
    }
    Py_DECREF(n);
    return 0;
}

/* begin(how, scope, receive, send): the request's exchange, its ids set, made current
   when something reads the request context (READERS) and ids or trace context are on */
static PyObject *
begin(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "begin(how, scope, receive, send)");
        return NULL;
    }
    PyObject *how = args[0], *scope = args[1];
    if (native_cls == NULL || !PyTuple_CheckExact(how) || PyTuple_GET_SIZE(how) != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "begin(): bind_class() first, how = (app, ids, resolve, templates)");
        return NULL;
    }
    long flags = PyLong_AsLong(PyTuple_GET_ITEM(how, 1));
    if (flags == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (trace.chunks == NULL && flags != 0) {
        PyErr_SetString(PyExc_RuntimeError, "begin(): bind_trace() was not called");
        return NULL;
    }
    Exchange *self = (Exchange *)native_cls->tp_alloc(native_cls, 0);
    if (self == NULL) {
        return NULL;
    }
    self->scope = Py_NewRef(scope);
    self->receive = Py_NewRef(args[2]);
    self->send = Py_NewRef(args[3]);
    self->status = Py_NewRef(int500);
    self->how = Py_NewRef(how);
    if (PyDict_CheckExact(scope)) {
        PyObject *root = PyDict_GetItemWithError(scope, s_root_path);
        if (root == NULL && PyErr_Occurred()) {
            goto fail;
        }
        self->root0 = Py_NewRef(root != NULL ? root : s_empty);
    }
    else if ((self->root0 = PyObject_CallMethod(scope, "get", "OO", s_root_path, s_empty))
             == NULL) {
        goto fail;
    }
    if (find_ids(self, scope) < 0 || assign_ids(self, flags) < 0) {
        goto fail;
    }
    if (flags) {
        int on = PyObject_IsTrue(PyList_GET_ITEM(readers, 0));
        if (on < 0) {
            goto fail;
        }
        if (on && (self->token = PyContextVar_Set(current_var, (PyObject *)self)) == NULL) {
            goto fail;
        }
    }
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

/* ex.run(): t0 stamped, the request counted as started, and the app called with the
   wrapped receive and send; its awaitable is the caller's to await */
static PyObject *
Exchange_run(Exchange *self, PyObject *unused)
{
    if (self->how == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "run(): an exchange from begin()");
        return NULL;
    }
    PyObject *receive = PyMethod_New(receive_func, (PyObject *)self);
    if (receive == NULL) {
        return NULL;
    }
    PyObject *send = PyCFunction_NewEx(&send_def, (PyObject *)self, NULL);
    if (send == NULL) {
        Py_DECREF(receive);
        return NULL;
    }
    double t0 = sink_now(&sink);
    PyObject *aw = NULL;
    if (!(t0 == -1.0 && PyErr_Occurred()) && bump(started_ctr) == 0) {
        self->t0 = t0;
        PyObject *call[3] = {self->scope, receive, send};
        aw = PyObject_Vectorcall(PyTuple_GET_ITEM(self->how, 0), call, 3, NULL);
    }
    Py_DECREF(receive);
    Py_DECREF(send);
    return aw;
}

/* ex.done(exc): the request's end (the last chunk's stamp, else now), counted as ended,
   no longer current, and its sample into the buffer under its route */
static PyObject *
Exchange_done(Exchange *self, PyObject *exc)
{
    if (self->how == NULL || self->scope == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "done(): an exchange from begin()");
        return NULL;
    }
    double t1 = self->t_end;
    if (!t1 && (t1 = sink_now(&sink)) == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (bump(ended_ctr) < 0) {
        return NULL;
    }
    if (self->token != NULL) {
        PyObject *token = self->token;
        self->token = NULL;
        int r = PyContextVar_Reset(current_var, token);
        Py_DECREF(token);
        if (r < 0) {  /* left from another context: the Python twin's fallback */
            if (!PyErr_ExceptionMatches(PyExc_ValueError)
                && !PyErr_ExceptionMatches(PyExc_RuntimeError)) {
                return NULL;
            }
            PyErr_Clear();
            PyObject *t = PyContextVar_Set(current_var, Py_None);
            if (t == NULL) {
                return NULL;
            }
            Py_DECREF(t);
        }
    }
    if (!sink_bound(&sink)) {
        return NULL;
    }
    PyObject *route = cached_route(self->scope, PyTuple_GET_ITEM(self->how, 3), self->root0);
    if (route == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        PyObject *call[2] = {self->scope, self->root0};
        route = PyObject_Vectorcall(PyTuple_GET_ITEM(self->how, 2), call, 2, NULL);
        if (route == NULL) {
            return NULL;
        }
    }
    PyObject *t0 = PyFloat_FromDouble(self->t0), *t1o = PyFloat_FromDouble(t1), *r = NULL;
    if (t0 != NULL && t1o != NULL) {
        r = record(self, t0, t1o, exc, route);
    }
    Py_XDECREF(t0);
    Py_XDECREF(t1o);
    Py_DECREF(route);
    return r;
}

static PyObject *
bind_class(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyType_Check(args[0])
        || !PyType_IsSubtype((PyTypeObject *)args[0], &ExchangeType)
        || !PyList_CheckExact(args[2]) || PyList_GET_SIZE(args[2]) != 1
        || !PyContextVar_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "bind_class(exchange_class, receive, readers: a"
                        " 1-list, current: a ContextVar)");
        return NULL;
    }
    Py_XSETREF(native_cls, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(receive_func, Py_NewRef(args[1]));
    Py_XSETREF(readers, Py_NewRef(args[2]));
    Py_XSETREF(current_var, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

static PyObject *
bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "bind(recorder, extend, until, default, cuts, exc_key, kind_http)");
        return NULL;
    }
    if (sink_bind(&sink, args) < 0) {
        return NULL;
    }
    Py_INCREF(args[5]);
    Py_XSETREF(exc_key, args[5]);
    Py_INCREF(args[6]);
    Py_XSETREF(kind_http, args[6]);
    PyObject *started = PyObject_GetAttr(args[0], s_started);
    PyObject *ended = started == NULL ? NULL : PyObject_GetAttr(args[0], s_ended);
    if (ended == NULL || !PyIter_Check(started) || !PyIter_Check(ended)) {
        Py_XDECREF(started);
        Py_XDECREF(ended);
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "bind(): the recorder's started and ended count");
        }
        return NULL;
    }
    Py_XSETREF(started_ctr, started);
    Py_XSETREF(ended_ctr, ended);
    Py_RETURN_NONE;
}

static int
Exchange_traverse(Exchange *self, visitproc visit, void *arg)
{
    Py_VISIT(self->receive);
    Py_VISIT(self->send);
    Py_VISIT(self->scope);
    Py_VISIT(self->status);
    Py_VISIT(self->rid);
    Py_VISIT(self->tp);
    Py_VISIT(self->in_rid);
    Py_VISIT(self->in_tp);
    Py_VISIT(self->how);
    Py_VISIT(self->root0);
    Py_VISIT(self->token);
    return 0;
}

static int
Exchange_clear(Exchange *self)
{
    Py_CLEAR(self->receive);
    Py_CLEAR(self->send);
    Py_CLEAR(self->scope);
    Py_CLEAR(self->status);
    Py_CLEAR(self->rid);
    Py_CLEAR(self->tp);
    Py_CLEAR(self->in_rid);
    Py_CLEAR(self->in_tp);
    Py_CLEAR(self->how);
    Py_CLEAR(self->root0);
    Py_CLEAR(self->token);
    return 0;
}

static void
Exchange_dealloc(Exchange *self)
{
    PyObject_GC_UnTrack(self);
    Exchange_clear(self);
    /* a Python subclass's instance: subtype_dealloc drops the reference to its type */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Exchange_methods[] = {
    {"send", (PyCFunction)Exchange_send, METH_O,
     "Count and pass on one message; the last body chunk's awaitable stamps the end time."},
    {"run", (PyCFunction)Exchange_run, METH_NOARGS,
     "run(): t0, the started count, and app(scope, receive, send) with the wrapped two."},
    {"done", (PyCFunction)Exchange_done, METH_O,
     "done(exc): the end time, the ended count, the context reset and the sample."},
    {NULL}
};

static PyMemberDef Exchange_members[] = {
    {"_receive", T_OBJECT_EX, offsetof(Exchange, receive), 0, NULL},
    {"_send", T_OBJECT_EX, offsetof(Exchange, send), 0, NULL},
    {"scope", T_OBJECT_EX, offsetof(Exchange, scope), 0, NULL},
    {"status", T_OBJECT_EX, offsetof(Exchange, status), 0, NULL},
    {"rid", T_OBJECT_EX, offsetof(Exchange, rid), 0, NULL},
    {"tp", T_OBJECT_EX, offsetof(Exchange, tp), 0, NULL},
    {"in_rid", T_OBJECT, offsetof(Exchange, in_rid), READONLY, NULL},
    {"in_tp", T_OBJECT, offsetof(Exchange, in_tp), READONLY, NULL},
    {"qb", T_PYSSIZET, offsetof(Exchange, qb), 0, NULL},
    {"rb", T_PYSSIZET, offsetof(Exchange, rb), 0, NULL},
    {"tf", T_DOUBLE, offsetof(Exchange, tf), 0, NULL},
    {"t0", T_DOUBLE, offsetof(Exchange, t0), READONLY, NULL},
    {"root0", T_OBJECT, offsetof(Exchange, root0), READONLY, NULL},
    {"t_end", T_DOUBLE, offsetof(Exchange, t_end), 0, NULL},
    {"disc", T_BOOL, offsetof(Exchange, disc), 0, NULL},
    {NULL}
};

static PyTypeObject ExchangeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "instrument.adapters._asgi.Exchange",
    .tp_doc = "One ASGI request's counters and its wrapped send (subclassed in asgi.py).",
    .tp_basicsize = sizeof(Exchange),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = Exchange_new,
    .tp_dealloc = (destructor)Exchange_dealloc,
    .tp_traverse = (traverseproc)Exchange_traverse,
    .tp_clear = (inquiry)Exchange_clear,
    .tp_methods = Exchange_methods,
    .tp_members = Exchange_members,
};

/* ---- LastSend: await the server's send, then stamp the exchange's end time ---- */

/* the server's awaitable's iterator, got once; -1 with an exception when not awaitable */
static int
start(LastSend *self)
{
    if (self->it == NULL) {
        PyObject *aw = self->aw;
        if (PyCoro_CheckExact(aw) || PyGen_CheckExact(aw)) {
            Py_INCREF(aw);
            self->it = aw;
        }
        else {
            PyAsyncMethods *am = Py_TYPE(aw)->tp_as_async;
            if (am == NULL || am->am_await == NULL) {
                PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                             Py_TYPE(aw)->tp_name);
                return -1;
            }
            PyObject *it = am->am_await(aw);
            if (it == NULL) {
                return -1;
            }
            self->it = it;
        }
    }
    return 0;
}

static PyObject *
LastSend_await(LastSend *self)
{
    if (start(self) < 0) {
        return NULL;
    }
    Py_INCREF(self);
    return (PyObject *)self;
}

static int
stamp(LastSend *self)
{
    double t = sink_now(&sink);
    if (t == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    self->ex->t_end = t;
    return 0;
}

/* one step with ``value``; NULL and no exception once the server's send has returned */
static PyObject *
step(LastSend *self, PyObject *value)
{
    /* asyncio takes it for a coroutine (it has send, throw and close) and may drive it
       with send(None) without asking __await__ first */
    if (self->it == NULL && start(self) < 0) {
        return NULL;
    }
    PyObject *res;
    PySendResult r = PyIter_Send(self->it, value, &res);
    if (r == PYGEN_NEXT) {
        return res;
    }
    if (r == PYGEN_ERROR) {
        return NULL;
    }
    if (stamp(self) < 0) {
        Py_DECREF(res);
        return NULL;
    }
    Py_DECREF(res);  /* ASGI's send returns None, and so does this (as _send_last does) */
    return NULL;
}

static PyObject *
LastSend_next(LastSend *self)
{
    return step(self, Py_None);
}

static PyObject *
LastSend_send(LastSend *self, PyObject *value)
{
    PyObject *res = step(self, value);
    if (res == NULL && !PyErr_Occurred()) {
        PyErr_SetNone(PyExc_StopIteration);
    }
    return res;
}

static PyObject *
LastSend_throw(LastSend *self, PyObject *args)
{
    PyObject *meth = self->it == NULL ? NULL : PyObject_GetAttr(self->it, s_throw);
    if (meth == NULL) {
        PyErr_Clear();
        if (self->it == NULL) {  /* thrown in before it ran: the server's send never will */
            PyObject *res = PyObject_CallMethodNoArgs(self->aw, s_close);
            Py_XDECREF(res);
            PyErr_Clear();
        }
        PyObject *typ, *val = NULL;
        if (!PyArg_UnpackTuple(args, "throw", 1, 3, &typ, &val, NULL)) {
            return NULL;
        }
        if (PyExceptionInstance_Check(typ)) {
            PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
        }
        else {
            PyErr_SetObject(typ, val);
        }
        return NULL;
    }
    PyObject *res = PyObject_Call(meth, args, NULL);
    Py_DECREF(meth);
    if (res == NULL && PyErr_ExceptionMatches(PyExc_StopIteration)) {
        /* the server's send finished while handling it */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        int failed = stamp(self);
        if (failed < 0) {
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
        }
        else {
            PyErr_Restore(et, ev, tb);
        }
    }
    return res;
}

static PyObject *
LastSend_close(LastSend *self, PyObject *unused)
{
    if (self->it == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *meth = PyObject_GetAttr(self->it, s_close);
    if (meth == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *res = PyObject_CallNoArgs(meth);
    Py_DECREF(meth);
    return res;
}

static int
LastSend_traverse(LastSend *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ex);
    Py_VISIT(self->aw);
    Py_VISIT(self->it);
    return 0;
}

static int
LastSend_clear(LastSend *self)
{
    Py_CLEAR(self->ex);
    Py_CLEAR(self->aw);
    Py_CLEAR(self->it);
    return 0;
}

static void
LastSend_dealloc(LastSend *self)
{
    PyObject_GC_UnTrack(self);
    LastSend_clear(self);
    PyObject_GC_Del(self);
}

static PyMethodDef LastSend_methods[] = {
    {"send", (PyCFunction)LastSend_send, METH_O, NULL},
    {"throw", (PyCFunction)LastSend_throw, METH_VARARGS, NULL},
    {"close", (PyCFunction)LastSend_close, METH_NOARGS, NULL},
    {NULL}
};

static PyAsyncMethods LastSend_async = {
    .am_await = (unaryfunc)LastSend_await,
};

static PyTypeObject LastSendType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "instrument.adapters._asgi.LastSend",
    .tp_doc = "The last body chunk's send: awaited, it stamps the request's end time.",
    .tp_basicsize = sizeof(LastSend),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)LastSend_dealloc,
    .tp_traverse = (traverseproc)LastSend_traverse,
    .tp_clear = (inquiry)LastSend_clear,
    .tp_as_async = &LastSend_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)LastSend_next,
    .tp_methods = LastSend_methods,
};

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
     "bind_trace(span_chunk, fresh, continued_bytes, ids_popleft, new_id, incoming_id): what"
     " the constructor's ids step calls."},
    {"forget_spans", forget_spans, METH_NOARGS,
     "forget_spans(): the span ids in hand dropped; the next starts a new chunk."},
    {"begin", (PyCFunction)(void (*)(void))begin, METH_FASTCALL,
     "begin(how, scope, receive, send): one request's exchange, ids set, made current."},
    {"bind_class", (PyCFunction)(void (*)(void))bind_class, METH_FASTCALL,
     "bind_class(exchange_class, receive, readers, current): what begin() builds and uses."},
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(recorder, extend, until, default, cuts, exc_key, kind_http): where record() goes."},
    {NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_methods = module_methods,
    .m_name = "instrument.adapters._asgi",
    .m_doc = "The ASGI middleware's exchange and send, compiled (see asgi.py).",
    .m_size = -1,
};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC
PyInit__asgi(void)
{
    INTERN(s_type, "type");
    INTERN(s_body, "body");
    INTERN(s_more_body, "more_body");
    INTERN(s_status, "status");
    INTERN(s_headers, "headers");
    INTERN(s_kind_body, "http.response.body");
    INTERN(s_kind_start, "http.response.start");
    INTERN(s_kind_pathsend, "http.response.pathsend");
    INTERN(s_throw, "throw");
    INTERN(s_close, "close");
    INTERN(s_path, "path");
    INTERN(s_query_string, "query_string");
    INTERN(s_client, "client");
    INTERN(s_method, "method");
    INTERN(s_route, "route");
    INTERN(s_fastapi, "fastapi");
    INTERN(s_effective, "effective_route_context");
    INTERN(s_root_path, "root_path");
    INTERN(s_empty, "");
    INTERN(s_started, "started");
    INTERN(s_ended, "ended");
    tp_init();
    if ((bytes_empty = PyBytes_FromStringAndSize(NULL, 0)) == NULL) {
        return NULL;
    }
    if ((b_rid_name = PyBytes_FromString("x-request-id")) == NULL
        || (b_tp_name = PyBytes_FromString("traceparent")) == NULL
        || (b_ua_name = PyBytes_FromString("user-agent")) == NULL
        || (int500 = PyLong_FromLong(500)) == NULL
        || (empty_tuple = PyTuple_New(0)) == NULL) {
        return NULL;
    }
    if (sink_init(&sink) < 0 || PyType_Ready(&ExchangeType) < 0
        || PyType_Ready(&LastSendType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Exchange", (PyObject *)&ExchangeType) < 0
        || PyModule_AddObjectRef(m, "LastSend", (PyObject *)&LastSendType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
