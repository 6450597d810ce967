"""Celery tasks, recorded as kind ``"task"`` through Celery's own signals; nothing is patched.

:func:`instrument_celery` connects receivers, once per process:

- ``before_task_publish`` (the publishing process) adds three message headers:
  ``x_published_at`` (``time.time()``), and, when the publisher is handling a
  request or a job, ``x_request_id`` and ``traceparent`` (plus ``tracestate``).
- ``task_prerun`` (the worker) reads one clock, works out the queue wait from
  ``x_published_at`` (from the ETA instead, for a task given a countdown or an
  ETA that is later) and enters :func:`instrument.logs.request_context` with the
  publisher's id and a child span of its trace, so the task's log lines carry
  the request id and trace id of the request that enqueued it.
- ``task_postrun`` reads the clock again, appends one sample and leaves the
  context. The outcome comes from the state Celery hands ``task_postrun``
  (``success``, ``failure``, ``retry``, ``rejected``, ``ignored``), so no
  receiver runs on ``task_success``, and ``task_failure``/``task_retry`` only count
  what never reached ``task_postrun`` in this process (a hard time limit, a lost
  worker process, a run stopped by a ``BaseException``): those are recorded with
  a zero duration, once per task id and exception type.
- ``task_revoked`` records ``revoked`` (zero duration: the task never ran).
- ``worker_process_shutdown`` flushes a prefork child, which leaves with
  ``os._exit`` and so never runs the kit's ``atexit`` flush.

Each run becomes one ``call_metrics`` row of kind ``task`` (name = task name,
method = outcome, exception = the exception's class name for a failure, or the
reason of a retry), and, when the message carried its publish time, one row of
kind ``task_wait`` (same name, duration = publish to start). The publish time is
the publisher's wall clock, so clock skew between hosts shows up in the wait.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, MutableMapping
from datetime import datetime
from time import perf_counter, time
from typing import Any

from instrument._errors import missing_extra
from instrument.core.buffer import KIND_TASK
from instrument.core.context import current, tracestate_of, valid_id
from instrument.core.runtime import ON, UNSTARTED, runtime
from instrument.logs.context import get_request_id, get_traceparent, request_context

try:
    from celery import Celery, signals
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("celery", "celery") from exc

__all__ = ["HEADER_PUBLISHED", "HEADER_REQUEST_ID", "HEADER_TRACEPARENT", "HEADER_TRACESTATE",
           "instrument_celery"]

#: Message headers the publisher adds (Celery copies custom headers onto ``task.request``).
HEADER_REQUEST_ID = "x_request_id"
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"
HEADER_PUBLISHED = "x_published_at"

#: Attribute of ``task.request`` holding ``(t0, queue_wait, context manager)`` of a run.
_RUN = "_instrument_run"
_OUTCOMES = {"SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry",
             "REJECTED": "rejected", "IGNORED": "ignored"}

_rt = runtime
_rec = runtime.recorder
_failed: dict[tuple[Any, Any], None] = {}  # out-of-band failures already counted, oldest first
_connecting = threading.Lock()
_connected: list[bool] = []


def _live() -> bool:
    if _rt.state == UNSTARTED:
        _rt.ensure_started()
    return _rt.state == ON


def _outgoing_headers(into: MutableMapping[str, Any] | None = None) -> MutableMapping[str, Any]:
    """The headers that carry this context into a task message (added to ``into`` if given).

    Always the publish time; the request id and trace only when something is current
    (a request, a job in :func:`request_context`, a task publishing another).
    """
    headers: MutableMapping[str, Any] = {} if into is None else into
    headers[HEADER_PUBLISHED] = time()
    ctx = current.get()
    if ctx is not None:
        rid = get_request_id()
        if rid is not None:
            headers[HEADER_REQUEST_ID] = rid
        tp = get_traceparent()
        if tp is not None:
            headers[HEADER_TRACEPARENT] = tp
            state = tracestate_of(ctx)
            if state:
                headers[HEADER_TRACESTATE] = state
    return headers


def _context_from_headers(
        headers: Mapping[str, Any]) -> tuple[str | None, str | None, str | None, float | None]:
    """``(request_id, traceparent, tracestate, published_at)`` from a message's headers.

    The values come off the wire, so each is checked: a request id that is not a valid
    id, or a publish time that is not a number, reads as None (a malformed traceparent
    is left to :func:`request_context`, which then starts a trace of its own).
    """
    rid = headers.get(HEADER_REQUEST_ID)
    if rid is not None and not (isinstance(rid, str) and valid_id(rid)):
        rid = None
    tp = headers.get(HEADER_TRACEPARENT)
    if tp is not None and not isinstance(tp, str):
        tp = None
    state = headers.get(HEADER_TRACESTATE)
    if state is not None and not isinstance(state, str):
        state = None
    sent = headers.get(HEADER_PUBLISHED)
    if sent.__class__ is not float:
        sent = float(sent) if isinstance(sent, int) and not isinstance(sent, bool) else None
    return rid, tp, state, sent


def _due(eta: Any) -> float | None:
    """Epoch seconds of a request's ETA (an ISO 8601 string in protocol 2), or None."""
    try:
        return datetime.fromisoformat(eta).timestamp() if isinstance(eta, str) else None
    except ValueError:
        return None


# -- the receivers -----------------------------------------------------------------------
def _before_publish(sender: Any = None, headers: Any = None, **_: Any) -> None:
    if headers is not None:
        _outgoing_headers(headers)


def _prerun(sender: Any = None, task: Any = None, **_: Any) -> None:
    t0 = perf_counter()
    req = task.request
    rid, tp, state, sent = _context_from_headers(req.__dict__)
    wait = None
    if sent is not None:
        start = time()
        if req.eta is not None:  # waited for its ETA on purpose: count from then
            due = _due(req.eta)
            if due is not None and due > sent:
                sent = due
        wait = start - sent if start > sent else 0.0
    elif rid is None and current.get() is not None:  # run in-process (apply, eager)
        rid, tp = get_request_id(), get_traceparent()
    cm = request_context(rid, route=task.name, method="TASK", traceparent=tp, tracestate=state)
    cm.__enter__()
    setattr(req, _RUN, (t0, wait, cm))


def _postrun(sender: Any = None, task: Any = None, retval: Any = None, state: Any = None,
             **_: Any) -> None:
    t1 = perf_counter()
    run = task.request.__dict__.pop(_RUN, None)
    if run is None:
        return
    t0, wait, cm = run
    try:
        # No state: a BaseException ended the run (the pool stopping the child at a hard
        # time limit, a revoke with terminate); the main process reports the outcome.
        if state is not None and (_rt.state == ON or _live()):
            outcome = _OUTCOMES.get(state) or str(state).lower()
            exc: BaseException | type[BaseException] | None = None
            if outcome == "failure":  # the exception itself: the flusher groups it
                exc = retval if isinstance(retval, BaseException) else None
            elif outcome == "retry":
                reason = getattr(retval, "exc", None)
                exc = type(reason) if isinstance(reason, BaseException) else None
            _rec.add_flat((KIND_TASK, t0, t1, task.name, outcome, exc, wait))
    finally:
        cm.__exit__(None, None, None)


def _unseen(request: Any, outcome: str, name: str, exc: type[BaseException] | None) -> None:
    """Count an outcome Celery reports outside the run this process traced (zero duration)."""
    if request is not None and _RUN in getattr(request, "__dict__", ()):
        return  # task_postrun records it
    if _rt.state == ON or _live():
        t = perf_counter()
        _rec.add_flat((KIND_TASK, t, t, name, outcome, exc, None))


def _on_failure(sender: Any = None, task_id: Any = None, exception: Any = None,
                **_: Any) -> None:
    if sender is None:
        return
    exc = type(exception) if isinstance(exception, BaseException) else None
    if _RUN not in sender.request.__dict__:
        # Celery 5.7 sends task_failure twice for a hard time limit (from the timeout
        # handler and from the pool's failure callback): count a task id and type once.
        key = (task_id, exc)
        if key in _failed:
            return
        _failed[key] = None
        if len(_failed) > 1024:
            del _failed[next(iter(_failed))]
    _unseen(sender.request, "failure", sender.name, exc)


def _on_retry(sender: Any = None, request: Any = None, **_: Any) -> None:
    if sender is not None:
        _unseen(request, "retry", sender.name, None)


def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    if sender is not None:
        _unseen(None, "revoked", sender.name, None)


def _on_process_shutdown(**_: Any) -> None:
    runtime.shutdown()


_RECEIVERS = (
    (signals.before_task_publish, _before_publish),
    (signals.task_prerun, _prerun),
    (signals.task_postrun, _postrun),
    (signals.task_failure, _on_failure),
    (signals.task_retry, _on_retry),
    (signals.task_revoked, _on_revoked),
    (signals.worker_process_shutdown, _on_process_shutdown),
)


def instrument_celery(app: Celery | None = None) -> Celery | None:
    """Record every task this process publishes or runs, and carry request ids into tasks.

    Call it where the app is defined, so both the web processes that enqueue and the
    workers that run import it. Celery's signals are process-wide: the receivers are
    connected once (``dispatch_uid``), whatever the number of apps or calls, and see
    the tasks of every app. ``app`` is returned unchanged.
    """
    with _connecting:
        if not _connected:
            for signal, receiver in _RECEIVERS:
                signal.connect(receiver, weak=False, dispatch_uid=f"instrument{receiver.__name__}")
            _connected.append(True)
    return app
