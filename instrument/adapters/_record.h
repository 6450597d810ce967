/* What the compiled exchanges (_asgi.c, _wsgi.c) share: the clock, the exemplar
 * candidate test and the bounded append of a request's sample to the recorder.
 *
 * Each module binds its own Sink once, from the middleware module's import
 * (bind(recorder, buffer.extend, exemplars.UNTIL, exemplars.DEFAULT, exemplars.CUTS, ...)).
 * The Python twins of these lines are in the middlewares' ``close``/``finally``.
 */
#ifndef INSTRUMENT_RECORD_H
#define INSTRUMENT_RECORD_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

typedef struct {
    PyObject *rec;          /* the process's Recorder */
    PyObject *extend;       /* its deque's bound extend */
    PyObject *until;        /* exemplars.UNTIL, a 1-list */
    PyObject *cut_default;  /* exemplars.DEFAULT, a 1-list */
    PyObject *cuts;         /* exemplars.CUTS, route -> seconds */
    PyObject *s_high, *s_cap, *s_high_end, *s_wake, *s_drops;
} Sink;

/* perf_counter() as a double, read here: the same clock (monotonic, nanoseconds) and the
 * same conversion as time.perf_counter(), so a stamp taken here compares with one taken
 * in Python, without the Python call and its float. -1.0 with an exception on failure. */
static double
sink_now(Sink *s)
{
    (void)s;  /* one clock for every sink */
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    if (PyTime_PerfCounter(&t) < 0) {
        return -1.0;
    }
    return PyTime_AsSecondsDouble(t);
#else
    return _PyTime_AsSecondsDouble(_PyTime_GetPerfCounter());
#endif
}

static int
sink_init(Sink *s)
{
    if ((s->s_high = PyUnicode_InternFromString("high")) == NULL
        || (s->s_cap = PyUnicode_InternFromString("cap")) == NULL
        || (s->s_high_end = PyUnicode_InternFromString("high_end")) == NULL
        || (s->s_wake = PyUnicode_InternFromString("wake")) == NULL
        || (s->s_drops = PyUnicode_InternFromString("drops")) == NULL) {
        return -1;
    }
    return 0;
}

/* bind(recorder, extend, until, default, cuts): 0, or -1 with an exception */
static int
sink_bind(Sink *s, PyObject *const *args)
{
    if (!PyCallable_Check(args[1])
        || !PyList_CheckExact(args[2]) || PyList_GET_SIZE(args[2]) != 1
        || !PyList_CheckExact(args[3]) || PyList_GET_SIZE(args[3]) != 1
        || !PyDict_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError, "bind(): a buffer's extend, until and default as"
                        " 1-lists, cuts a dict");
        return -1;
    }
    PyObject **slots[5] = {&s->rec, &s->extend, &s->until, &s->cut_default, &s->cuts};
    for (int i = 0; i < 5; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*slots[i], args[i]);
    }
    return 0;
}

static int
sink_bound(Sink *s)
{
    if (s->rec == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the compiled exchange's bind() was not called");
        return 0;
    }
    return 1;
}

static double
as_double(PyObject *o)
{
    return PyFloat_CheckExact(o) ? PyFloat_AS_DOUBLE(o) : PyFloat_AsDouble(o);
}

/* Could this request be among its route's slowest this minute (exemplars.py)? Past
 * UNTIL, or not faster than the route's cut. 1, 0, or -1 with an exception. Exemplars
 * off (both bounds infinite) costs the two reads. */
static int
sink_slow_candidate(Sink *s, double t0, double t1, PyObject *route)
{
    double until = as_double(PyList_GET_ITEM(s->until, 0));
    double dflt = as_double(PyList_GET_ITEM(s->cut_default, 0));
    if (PyErr_Occurred()) {
        return -1;
    }
    if (isinf(until) && isinf(dflt) && PyDict_GET_SIZE(s->cuts) == 0) {
        return 0;  /* exemplars off: nothing is ever a candidate by its time */
    }
    if (t0 >= until) {
        return 1;
    }
    PyObject *cut = PyDict_GetItemWithError(s->cuts, route);
    if (cut == NULL) {
        if (PyErr_Occurred()) {
            return -1;
        }
        return t1 - t0 >= dflt;
    }
    double c = as_double(cut);
    if (c == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    return t1 - t0 >= c;
}

static Py_ssize_t
sink_int(Sink *s, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(s->rec, name);
    if (v == NULL) {
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return n;
}

/* Recorder.add_flat: a bounded append of ``sample``'s fields, or an exact drop count.
 * Nothing here runs Python code between the length read and the extend, so the two
 * stay together under the GIL, as in the Python twin. 0, or -1 with an exception. */
static int
sink_append(Sink *s, PyObject *sample)
{
    PyObject *buf = PyCFunction_Check(s->extend) ? PyCFunction_GET_SELF(s->extend) : NULL;
    if (buf == NULL) {
        PyErr_SetString(PyExc_TypeError, "bind(): extend is not a deque's bound method");
        return -1;
    }
    Py_ssize_t n = PyObject_Size(buf);
    if (n < 0) {
        return -1;
    }
    Py_ssize_t high = sink_int(s, s->s_high);
    if (high < 0 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *r;
    if (n < high) {  /* below half full, the common case */
        r = PyObject_CallOneArg(s->extend, sample);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    Py_ssize_t cap = sink_int(s, s->s_cap);
    if (cap < 0 && PyErr_Occurred()) {
        return -1;
    }
    if (n < cap) {
        r = PyObject_CallOneArg(s->extend, sample);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
        Py_ssize_t high_end = sink_int(s, s->s_high_end);
        if (high_end < 0 && PyErr_Occurred()) {
            return -1;
        }
        if (n < high_end) {  /* the one append that crosses half full wakes the flusher */
            r = PyObject_CallMethodNoArgs(s->rec, s->s_wake);
            Py_XDECREF(r);
            return r == NULL ? -1 : 0;
        }
        return 0;
    }
    PyObject *drops = PyObject_GetAttr(s->rec, s->s_drops);
    if (drops == NULL) {
        return -1;
    }
    r = PyIter_Next(drops);
    Py_DECREF(drops);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

#endif
