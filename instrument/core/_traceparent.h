/* Continuing an incoming W3C traceparent, and choosing the request's id, in C.
 *
 * trace.py holds the reference (``continued``, ``continued_bytes``) and context.py the
 * request id's (``incoming_id``, ``new_id``); these lines do the same for what almost
 * every caller sends, a version-00 value of exactly 55 characters, and hand anything
 * else to those Python functions, so every answer is theirs. Included by core/_trace.c
 * (trace.fast_continued*) and by the compiled exchanges (adapters/_wsgi.c, _asgi.c),
 * whose constructors set a request's ``tp`` and ``rid`` with no Python call, no tuple
 * and no dict built: tests/test_trace_native.py and tests/test_*_native.py hold them
 * to the twins. A continued trace's new span id is copied from a chunk of random hex
 * (trace.span_chunk, minted ahead by the flusher), one Python call per 256 spans; a
 * forked child drops the chunk it inherited.
 */
#ifndef INSTRUMENT_TRACEPARENT_H
#define INSTRUMENT_TRACEPARENT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

/* What trace.py and context.py lend each module that includes this (bound once), and the
   chunk of span ids the module is taking its spans from. */
typedef struct {
    PyObject *chunks;     /* trace.span_chunk: bytes of random hex, 16 digits a span id */
    PyObject *fresh;      /* trace.fresh: a traceparent starting a new trace */
    PyObject *slow;       /* trace.continued or continued_bytes: any other value */
    PyObject *ids;        /* context.IDS.popleft: a request id minted ahead */
    PyObject *new_id;     /* context.new_id: one minted here when none is ahead */
    PyObject *incoming;   /* context.incoming_id: the caller's id, checked */
    PyObject *chunk;      /* the chunk in hand (NULL: none yet) */
    Py_ssize_t at;        /* where its next span id starts */
} Trace;

/* 1 for every byte that is not a lowercase hex digit */
static unsigned char tp_nothex[256];
/* set in a forked child: the chunk in hand is the parent's too, so it is dropped unused */
static volatile int tp_forked;

static void
tp_after_fork(void)
{
    tp_forked = 1;
}

static inline void
tp_init(void)
{
    memset(tp_nothex, 1, sizeof tp_nothex);
    for (const char *c = "0123456789abcdef"; *c; c++) {
        tp_nothex[(unsigned char)*c] = 0;
    }
    pthread_atfork(NULL, NULL, tp_after_fork);
}

static inline uint64_t
tp_word(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* Eight lowercase hex digits at ``p``? Byte-parallel (SWAR): a byte below 0x80 gets its
   high bit from ``+ 0x50`` when it is at least '0' and loses it to ``+ 0x46`` from ':' on;
   the same for 'a'..'f'; no sum carries into the next byte. */
static inline int
tp_hex8(const unsigned char *p)
{
    const uint64_t hi = 0x8080808080808080ull, one = 0x0101010101010101ull;
    uint64_t w = tp_word(p);
    if (w & hi) {
        return 0;
    }
    uint64_t digit = (w + 0x50 * one) & ~(w + 0x46 * one);
    uint64_t lower = (w + 0x1f * one) & ~(w + 0x19 * one);
    return ((digit | lower) & hi) == hi;
}

#if defined(__GNUC__)
#define TP_INLINE static inline __attribute__((always_inline))
#else
#define TP_INLINE static inline
#endif

#if defined(__SSE2__)
#include <emmintrin.h>

/* Sixteen lowercase hex digits at ``p``? One compare per range; a byte from 0x80 up is
   negative to the signed compares, so it is in neither. */
TP_INLINE int
tp_hex16(const unsigned char *p)
{
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('0' - 1)),
                                  _mm_cmplt_epi8(v, _mm_set1_epi8('9' + 1)));
    __m128i lower = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('a' - 1)),
                                  _mm_cmplt_epi8(v, _mm_set1_epi8('f' + 1)));
    return _mm_movemask_epi8(_mm_or_si128(digit, lower)) == 0xFFFF;
}

/* Sixteen "0" at ``p``? */
TP_INLINE int
tp_zero16(const unsigned char *p)
{
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    return _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('0'))) == 0xFFFF;
}
#else
TP_INLINE int
tp_hex16(const unsigned char *p)
{
    return tp_hex8(p) && tp_hex8(p + 8);
}

TP_INLINE int
tp_zero16(const unsigned char *p)
{
    const uint64_t z = 0x3030303030303030ull;  /* "00000000" */
    return tp_word(p) == z && tp_word(p + 8) == z;
}
#endif

/* The 55 bytes at ``p``: 1 a valid version-00 value, 0 another shape, -1 an all-zero id */
static inline int
tp_check(const unsigned char *p)
{
    if (p[0] != '0' || p[1] != '0' || p[2] != '-' || p[35] != '-' || p[52] != '-'
        || tp_nothex[p[53]] || tp_nothex[p[54]]) {
        return 0;
    }
    if (!(tp_hex16(p + 3) && tp_hex16(p + 19) && tp_hex16(p + 36))) {
        return 0;
    }
    if ((tp_zero16(p + 3) && tp_zero16(p + 19)) || tp_zero16(p + 36)) {
        return -1;
    }
    return 1;
}

/* A fresh span id, 16 hex digits, written at ``dst``: copied from the chunk in hand (no
   Python call, no object), a new chunk taken from trace.span_chunk once it is used up.
   0, or -1 with an exception. */
static inline int
tp_span(Trace *t, char *dst)
{
    if (tp_forked) {  /* in a forked child: the parent hands out the rest of its chunk */
        tp_forked = 0;
        Py_CLEAR(t->chunk);
    }
    for (;;) {
        if (t->chunk == NULL || t->at + 16 > PyBytes_GET_SIZE(t->chunk)) {
            PyObject *c = PyObject_CallNoArgs(t->chunks);  /* may let another thread run */
            if (c == NULL) {
                return -1;
            }
            if (!PyBytes_CheckExact(c) || PyBytes_GET_SIZE(c) < 16) {
                Py_DECREF(c);
                PyErr_SetString(PyExc_ValueError, "a chunk of span ids is not bytes of hex");
                return -1;
            }
            Py_XSETREF(t->chunk, c);
            t->at = 0;
        }
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(t->chunk) + t->at;
        t->at += 16;
        if (!tp_zero16(p)) {  /* all zeros is not a span id */
            memcpy(dst, p, 16);
            return 0;
        }
    }
}

/* trace.fresh(), as bytes when ``as_bytes`` */
static inline PyObject *
tp_fresh(Trace *t, int as_bytes)
{
    PyObject *tp = PyObject_CallNoArgs(t->fresh);
    if (tp != NULL && as_bytes) {
        Py_SETREF(tp, PyUnicode_AsASCIIString(tp));
    }
    return tp;
}

/* This request's traceparent for the incoming header ``value``, into ``*tp`` (str, or
   bytes when ``as_bytes``), and the caller's trace id into ``*caller`` (str; NULL when a
   new trace began). Both new references. 0, or -1 with an exception and nothing set. */
static inline int
tp_continue(Trace *t, PyObject *value, int as_bytes, PyObject **tp, PyObject **caller)
{
    const unsigned char *p = NULL;
    if (as_bytes) {
        if (PyBytes_CheckExact(value) && PyBytes_GET_SIZE(value) == 55) {
            p = (const unsigned char *)PyBytes_AS_STRING(value);
        }
    }
    else if (PyUnicode_CheckExact(value) && PyUnicode_IS_COMPACT_ASCII(value)
             && PyUnicode_GET_LENGTH(value) == 55) {
        p = PyUnicode_DATA(value);
    }
    int ok = p != NULL ? tp_check(p) : 0;
    if (ok < 0) {
        *caller = NULL;
        *tp = tp_fresh(t, as_bytes);
        return *tp == NULL ? -1 : 0;
    }
    if (ok == 0) {  /* another version, length or shape: the reference decides */
        PyObject *pair = PyObject_CallOneArg(t->slow, value);
        if (pair == NULL) {
            return -1;
        }
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_TypeError, "trace.continued did not return a pair");
            return -1;
        }
        *tp = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        PyObject *c = PyTuple_GET_ITEM(pair, 1);
        *caller = c == Py_None ? NULL : Py_NewRef(c);
        Py_DECREF(pair);
        return 0;
    }
    PyObject *out = as_bytes ? PyBytes_FromStringAndSize(NULL, 55) : PyUnicode_New(55, 127);
    PyObject *trace = PyUnicode_New(32, 127);
    if (out == NULL || trace == NULL) {
        Py_XDECREF(out);
        Py_XDECREF(trace);
        return -1;
    }
    char *o = as_bytes ? PyBytes_AS_STRING(out) : PyUnicode_DATA(out);
    memcpy(o, p, 36);  /* "00-" + trace + "-", then a fresh span, "-" + flags */
    memcpy(o + 52, p + 52, 3);
    memcpy(PyUnicode_DATA(trace), p + 3, 32);
    if (tp_span(t, o + 36) < 0) {
        Py_DECREF(out);
        Py_DECREF(trace);
        return -1;
    }
    *tp = out;
    *caller = trace;
    return 0;
}

/* The request's id (a new reference): the caller's checked ``in_rid`` when one came (NULL:
   none), else the caller's trace id ``caller`` (NULL: none), else one minted ahead. */
static inline PyObject *
tp_request_id(Trace *t, PyObject *in_rid, PyObject *caller)
{
    if (in_rid != NULL) {
        return PyObject_CallOneArg(t->incoming, in_rid);
    }
    if (caller != NULL) {
        return Py_NewRef(caller);
    }
    PyObject *rid = PyObject_CallNoArgs(t->ids);
    if (rid == NULL && PyErr_ExceptionMatches(PyExc_IndexError)) {
        PyErr_Clear();
        rid = PyObject_CallNoArgs(t->new_id);  /* none minted ahead (yet) */
    }
    return rid;
}

/* Bind ``t`` from ``args[0:n]`` (callables, in the struct's order; n is 3 or 6). */
static inline int
tp_bind(Trace *t, PyObject *const *args, Py_ssize_t n)
{
    PyObject **slots[6] = {&t->chunks, &t->fresh, &t->slow, &t->ids, &t->new_id,
                           &t->incoming};
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyCallable_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "bind_trace() takes callables");
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XSETREF(*slots[i], Py_NewRef(args[i]));
    }
    return 0;
}

/* The body of a module's ``bind_trace(*trace.TRACE_BINDING, continued, IDS.popleft, new_id,
   incoming_id)``: ``t`` bound from its six arguments. */
static inline PyObject *
tp_bind_trace(Trace *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "bind_trace(span_chunk, fresh, continued,"
                        " ids_popleft, new_id, incoming_id)");
        return NULL;
    }
    if (tp_bind(t, args, 6) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* A module's ``forget_spans()``: the chunk in hand dropped, so the next span id starts a
   new one (as in a forked child; tests use it to reach the minting path). */
static inline PyObject *
tp_forget_spans(Trace *t)
{
    Py_CLEAR(t->chunk);
    Py_RETURN_NONE;
}

#endif
