"""The compiled ASGI exchange (``instrument/adapters/_asgi.c``) against its pure-Python twin.

tests/test_asgi.py runs every middleware test under uvicorn with each of the two; here
they are held to the same result message by message, the compiled one's awaitable is
driven through asyncio's suspensions, failures and cancellations, and it is checked
not to leak. The server's ``send`` below is a plain coroutine that records what it is
given: that is all a server's ``send`` is to the exchange.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import sys
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import instrument
from instrument.adapters import asgi
from instrument.asgi import InstrumentMiddleware
from instrument.config import ConfigError

TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_compiled_exchange_is_built() -> None:
    """`make test` installs with a C compiler, so the compiled exchange must be there."""
    assert asgi._Native is not None, "instrument/adapters/_asgi.c was not compiled (gcc?)"
    assert asgi.exchange_class() is asgi._Native
    assert asgi.exchange_class(native=False) is asgi._Exchange


def test_instrument_native_chooses_the_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    instrument.configure(native=False)
    assert InstrumentMiddleware(app)._exchange is asgi._Exchange
    instrument.configure(native=True)
    assert InstrumentMiddleware(app)._exchange is asgi._Native
    monkeypatch.setenv("INSTRUMENT_NATIVE", "sometimes")
    with pytest.raises(ConfigError, match=r"INSTRUMENT_NATIVE.*sometimes"):
        instrument.configure()


def _exchange(cls: type, server_send: Any, rid: Any, tp: Any) -> Any:
    ex = cls()
    ex._send = server_send
    ex.rid = rid
    ex.tp = tp
    ex.qb = ex.rb = 0
    ex.status = 500
    ex.tf = ex.t_end = 0.0
    ex.disc = False
    return ex


async def _drive(cls: type, messages: list[dict[str, Any]], rid: Any, tp: Any) -> Any:
    delivered: list[Any] = []

    async def server_send(message: dict[str, Any]) -> None:
        delivered.append(copy.deepcopy(message))

    ex = _exchange(cls, server_send, rid, tp)
    outcomes = []
    ends = []
    for message in messages:
        try:
            outcomes.append(("returned", await ex.send(message)))
        except Exception as e:  # what one raises the other must raise
            outcomes.append(("raised", type(e).__name__))
        ends.append(ex.t_end > 0)
    return delivered, outcomes, ends, ex.status, ex.rb, ex.tf > 0


_bodies = st.sampled_from([None, b"", b"abc", b"x" * 70_000, bytearray(b"xy"), "text"])
_more = st.sampled_from([None, True, False, 0, 1, ""])
_headers = st.sampled_from([None, [], [(b"content-type", b"text/plain")],
                            ((b"a", b"1"), (b"b", b"2"))])


@st.composite
def _message(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["http.response.start", "http.response.body",
                                 "http.response.pathsend", "http.response.trailers", None]))
    message: dict[str, Any] = {} if kind is None else {"type": kind}
    if kind == "http.response.start":
        message["status"] = draw(st.sampled_from([200, 404, 500]))
        headers = draw(_headers)
        if headers is not None:
            message["headers"] = headers
        if draw(st.integers(0, 9)) == 0:
            del message["status"]
    elif kind == "http.response.body":
        body, more = draw(_bodies), draw(_more)
        if body is not None:
            message["body"] = body
        if more is not None:
            message["more_body"] = more
    return message


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(_message(), min_size=1, max_size=5),
       rid=st.sampled_from([None, "req-1", "ünïcode"]),
       tp=st.sampled_from([None, b"", TP, "00-str-form"]))
def test_the_compiled_send_does_what_the_python_one_does(messages: list[dict[str, Any]],
                                                         rid: Any, tp: Any) -> None:
    """Same messages reach the server, same errors, same counts, status and timestamps."""
    assert asgi._Native is not None
    pure = asyncio.run(_drive(asgi._Exchange, copy.deepcopy(messages), rid, tp))
    native = asyncio.run(_drive(asgi._Native, copy.deepcopy(messages), rid, tp))
    assert native == pure


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "python"])
def test_the_end_is_stamped_when_the_server_has_taken_the_last_chunk(native: bool) -> None:
    """A server send that waits (flow control) ends the request when it returns, not before."""
    cls = asgi.exchange_class(native)

    async def main() -> tuple[float, float, Any]:
        loop = asyncio.get_running_loop()
        gate = loop.create_future()

        async def server_send(message: dict[str, Any]) -> str:
            await gate
            return "taken"

        ex = _exchange(cls, server_send, None, b"")
        task = asyncio.ensure_future(ex.send({"type": "http.response.body", "body": b"z"}))
        await asyncio.sleep(0.01)
        before = ex.t_end
        gate.set_result(None)
        result = await task
        return before, ex.t_end, result

    before, end, result = asyncio.run(main())
    assert before == 0.0
    assert end > 0.0
    assert result is None  # ASGI's send returns None; a server's value is not passed on


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "python"])
def test_a_failing_or_cancelled_last_send_passes_through_unstamped(native: bool) -> None:
    cls = asgi.exchange_class(native)
    failure = ConnectionResetError("client went away")

    async def main() -> tuple[Any, Any, float, float]:
        async def failing(message: dict[str, Any]) -> None:
            await asyncio.sleep(0)
            raise failure

        async def stuck(message: dict[str, Any]) -> None:
            await asyncio.sleep(60)

        ex1 = _exchange(cls, failing, None, b"")
        with pytest.raises(ConnectionResetError) as caught:
            await ex1.send({"type": "http.response.body", "body": b"z"})
        ex2 = _exchange(cls, stuck, None, b"")
        task = asyncio.ensure_future(ex2.send({"type": "http.response.pathsend", "path": "/x"}))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return caught.value, task.cancelled(), ex1.t_end, ex2.t_end

    raised, cancelled, end1, end2 = asyncio.run(main())
    assert raised is failure  # the very object, not a copy
    assert cancelled
    assert end1 == end2 == 0.0


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "python"])
def test_a_server_send_that_returns_a_future_is_awaited(native: bool) -> None:
    """ASGI only asks for an awaitable: a server may hand back a Future, not a coroutine."""
    cls = asgi.exchange_class(native)

    async def main() -> tuple[float, Any]:
        loop = asyncio.get_running_loop()

        def server_send(message: dict[str, Any]) -> asyncio.Future[Any]:
            fut = loop.create_future()
            loop.call_later(0.01, fut.set_result, 7)
            return fut

        ex = _exchange(cls, server_send, None, b"")
        result = await ex.send({"type": "http.response.body"})
        return ex.t_end, result

    end, result = asyncio.run(main())
    assert end > 0.0
    assert result is None


def test_the_compiled_exchange_does_not_leak() -> None:
    """Many requests' worth of sends leave no exchange, awaitable or allocation behind."""
    assert asgi._Native is not None
    cls = asgi._Native

    async def server_send(message: dict[str, Any]) -> None:
        return None

    async def requests(n: int) -> None:
        for _ in range(n):
            ex = _exchange(cls, server_send, "req-9", TP)
            ex.scope = {"type": "http", "leak-test": True}
            await ex.send({"type": "http.response.start", "status": 200,
                           "headers": [(b"content-type", b"text/plain")]})
            await ex.send({"type": "http.response.body", "body": b"a", "more_body": True})
            await ex.send({"type": "http.response.body", "body": b"b"})
            try:
                await ex.send({"status": 200})  # no type: KeyError
            except KeyError:
                pass

    asyncio.run(requests(2_000))  # warm-up: interned strings, free lists, caches
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    asyncio.run(requests(20_000))
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # allocations are traced to the Python line that made them: this file's are the sends'
    # (other threads of the test session allocate too, under their own files)
    mine = tracemalloc.Filter(True, __file__)
    grown = sum(stat.size_diff for stat in after.filter_traces([mine]).compare_to(
        before.filter_traces([mine]), "filename"))
    assert grown < 64 * 1024, f"{grown} bytes more after 20,000 requests"
    from instrument.adapters._asgi import LastSend
    left = [o for o in gc.get_objects() if type(o) is LastSend
            or (type(o) is cls and getattr(o, "scope", {}).get("leak-test"))]
    assert left == []


def test_the_compiled_send_keeps_no_reference_it_does_not_own() -> None:
    """Reference counts of what a message holds are back where they were after each send."""
    assert asgi._Native is not None
    kind_body = "".join(["http.response.", "body"])  # fresh objects, not interned constants
    kind_start = "".join(["http.response.", "start"])
    status, body, headers = int("299"), bytes(range(10)), [(b"a", b"b")]
    rid = "".join(["req-", "7"])

    async def server_send(message: dict[str, Any]) -> None:
        return None

    async def sends(n: int) -> None:
        for _ in range(n):
            ex = _exchange(asgi._Native, server_send, rid, TP)
            await ex.send({"type": kind_start, "status": status, "headers": headers})
            await ex.send({"type": kind_body, "body": body, "more_body": True})
            await ex.send({"type": kind_body, "body": body})
            del ex

    asyncio.run(sends(10))
    counts = [sys.getrefcount(o) for o in (kind_body, kind_start, status, body, headers, rid)]
    asyncio.run(sends(1_000))
    gc.collect()
    assert [sys.getrefcount(o) for o in (kind_body, kind_start, status, body, headers,
                                         rid)] == counts


_UA = b"curl/8.0 <script>"


def _scope(path: str, headers: list[Any], query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": query, "headers": headers, "client": ("10.0.0.9", 4242),
            "server": ("127.0.0.1", 80)}


FAILURE = LookupError("no such item")


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/raise":
        raise FAILURE
    if path == "/silent":  # never starts a response
        return
    if path == "/answered":  # a framework that turned an exception into its own 500
        scope["instrument.exc"] = KeyError
    status = 503 if path == "/unavailable" else 500 if path == "/answered" else 200
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"part", "more_body": True})
    await send({"type": "http.response.body", "body": b"-end"})


_REQUESTS = [
    ("/ok", [(b"user-agent", _UA), (b"x-request-id", b"given-id-1")], b"q=1&token=x"),
    ("/ok", [[b"user-agent", _UA]], b""),  # a server sending lists
    ("/ok", [], b""),
    ("/raise", [(b"user-agent", _UA)], b""),
    ("/silent", [], b""),
    ("/answered", [], b""),
    ("/unavailable", [(b"traceparent", TP)], b""),
    ("/ok", [[b"x-request-id", b"list-id"], [b"traceparent", TP]], b""),
    ("/ok", [(b"x-request-id", b"first"), (b"host", b"a"), (b"x-request-id", b"second")], b""),
]
#: request ids the requests above bring (the first of each; a traceparent's trace id)
_GIVEN = {"given-id-1", "list-id", "first", TP[3:35].decode()}


def _samples(native: bool, candidate: bool) -> list[Any]:
    from instrument.core import exemplars
    from instrument.core.runtime import runtime

    instrument.configure(flush_interval=3600, native=native)
    mw = InstrumentMiddleware(_app)
    assert mw._native is native
    rec = runtime.recorder
    rec.drain(10_000)
    saved = exemplars.UNTIL[0], exemplars.DEFAULT[0]
    exemplars.UNTIL[0] = 0.0 if candidate else float("inf")
    exemplars.DEFAULT[0] = float("inf")

    async def server_send(message: dict[str, Any]) -> None:
        return None

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def run() -> list[Any]:
        raised = []
        for path, headers, query in _REQUESTS:
            try:
                await mw(_scope(path, headers, query), receive, server_send)
            except LookupError as e:
                raised.append(e)
        return raised

    try:
        raised = asyncio.run(run())
        samples = rec.drain(10_000)
    finally:
        exemplars.UNTIL[0], exemplars.DEFAULT[0] = saved
    assert raised == [FAILURE] and raised[0] is FAILURE
    out = []
    for s in samples:
        kind, t0, t1, tf, *rest = s
        assert t1 >= t0 > 0
        disc = rest[-1]
        if disc.__class__ is tuple:  # the request id of a request that came without one
            disc = (disc[0], disc[1] if disc[1] in _GIVEN else bool(disc[1]), *disc[2:-1],
                    disc[-1] if disc[-1] in (None, b"") else bytes(disc[-1])[:36])
        out.append((kind, tf > 0, *rest[:-1], disc))
    return out


@pytest.mark.parametrize("candidate", [True, False], ids=["candidates", "past-the-cut"])
def test_the_compiled_record_buffers_the_python_sample(candidate: bool) -> None:
    """Same fields, same exception object, same exemplar details, for every kind of ending."""
    assert asgi._Native is not None
    native, pure = _samples(True, candidate), _samples(False, candidate)
    assert native == pure
    assert len(native) == len(_REQUESTS)
    # (kind, first byte sent, route, method, status, bytes in, bytes out, exception, disc)
    by_route = {s[2]: s for s in native}
    assert by_route["/raise"][4:8] == (500, 0, 0, FAILURE)
    assert by_route["/raise"][7] is FAILURE
    assert by_route["/answered"][4] == 500 and by_route["/answered"][7] is KeyError
    assert by_route["/unavailable"][4:7] == (503, 0, 8)
    assert by_route["/silent"][1:2] + by_route["/silent"][4:8] == (False, 500, 0, 0, None)
    details = native[0][-1]
    if candidate:
        assert details[:6] == (False, "given-id-1", "/ok", b"q=1&token=x", ("10.0.0.9", 4242), _UA)
        assert [s[-1][1] for s in native[-2:]] == ["list-id", "first"]
    else:
        assert details is False


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "python"])
def test_a_full_buffer_drops_and_counts_and_half_full_wakes_once(native: bool) -> None:
    from instrument.core.runtime import runtime

    instrument.configure(flush_interval=3600, native=native)
    mw = InstrumentMiddleware(_app)
    rec = runtime.recorder
    rec.drain(10_000)
    woken = []
    saved_wake, saved_capacity = rec.wake, rec.capacity
    dropped = rec.dropped

    async def server_send(message: dict[str, Any]) -> None:
        return None

    async def run(n: int) -> None:
        for _ in range(n):
            await mw(_scope("/ok", []), server_send, server_send)

    rec.wake = lambda: woken.append(1)
    rec.resize(4)  # room for 4 requests; half full after 2
    try:
        asyncio.run(run(7))
        kept = rec.drain(100)
    finally:
        rec.wake = saved_wake
        rec.resize(saved_capacity)
    assert len(kept) == 4
    assert rec.dropped - dropped == 3
    assert woken == [1]


# ---- the middleware's request, start to sample: begin(), run() and done() compiled ----


def _middleware(native: bool) -> InstrumentMiddleware:
    instrument.configure(flush_interval=3600, native=native)
    mw = InstrumentMiddleware(_app)
    assert mw._native is native
    return mw


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "python"])
def test_the_request_is_current_inside_and_not_after(native: bool) -> None:
    """With a reader of the request context, the app sees its request; after it, nothing."""
    from instrument.core.context import READERS, current
    from instrument.core.runtime import runtime

    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current.get().describe())
        await _app(scope, receive, send)

    instrument.configure(flush_interval=3600, native=native)
    mw = InstrumentMiddleware(app)
    runtime.recorder.drain(10_000)

    async def server_send(message: dict[str, Any]) -> None:
        return None

    async def one() -> Any:
        await mw(_scope("/ok", [(b"x-request-id", b"ctx-id-1")]), server_send, server_send)
        return current.get()

    saved = READERS[0]
    READERS[0] = True
    try:
        after = asyncio.run(one())
    finally:
        READERS[0] = saved
    assert seen == [("ctx-id-1", "GET", "/ok")]
    assert after is None
    assert len(runtime.recorder.drain(10_000)) == 1


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "python"])
def test_a_request_finished_in_another_context_still_records(native: bool) -> None:
    """A coroutine started in one context and finished in another (a framework moving it)
    cannot reset its token there: the context is cleared instead, and the sample kept."""
    import contextvars

    from instrument.core.context import READERS, current
    from instrument.core.runtime import runtime

    mw = _middleware(native)
    runtime.recorder.drain(10_000)
    gate: asyncio.Future[None] | None = None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await gate  # type: ignore[misc]
        await _app(scope, receive, send)

    mw.app = app  # __setattr__ keeps what the compiled path reads in step

    async def server_send(message: dict[str, Any]) -> None:
        return None

    loop = asyncio.new_event_loop()
    saved = READERS[0]
    READERS[0] = True
    try:
        gate = loop.create_future()
        coro = mw(_scope("/ok", []), server_send, server_send)
        first = contextvars.copy_context()
        yielded = first.run(coro.send, None)  # started (and made current) in one context
        assert yielded is gate
        gate.set_result(None)
        with pytest.raises(StopIteration):
            contextvars.copy_context().run(coro.send, None)  # finished in another
    finally:
        READERS[0] = saved
        loop.close()
    assert first.get(current) is not None  # the first context still holds it: not ours
    samples = runtime.recorder.drain(10_000)
    assert [(s[4], s[6]) for s in samples] == [("/ok", 200)]


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "python"])
def test_raised_and_cancelled_requests_pass_through_and_end(native: bool) -> None:
    """The handler's exception, and a cancellation, come out unchanged; each request is
    counted as ended and recorded as a 500 carrying what ended it."""
    from instrument.core.runtime import runtime

    mw = _middleware(native)
    rec = runtime.recorder
    rec.drain(10_000)
    before = rec.in_flight

    async def hang(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(3600)

    async def server_send(message: dict[str, Any]) -> None:
        return None

    async def main() -> tuple[Any, Any]:
        try:
            await mw(_scope("/raise", []), server_send, server_send)
        except LookupError as e:
            raised = e
        mw.app = hang
        task = asyncio.ensure_future(mw(_scope("/hang", []), server_send, server_send))
        await asyncio.sleep(0)
        assert rec.in_flight == before + 1
        task.cancel()
        try:
            await task
        except asyncio.CancelledError as e:
            cancelled = e
        return raised, cancelled

    raised, cancelled = asyncio.run(main())
    assert raised is FAILURE
    assert isinstance(cancelled, asyncio.CancelledError)
    assert rec.in_flight == before
    samples = rec.drain(10_000)
    assert [(s[4], s[6], type(s[9])) for s in samples] == [
        ("/raise", 500, LookupError), ("/hang", 500, asyncio.CancelledError)]


def test_the_compiled_request_path_does_not_leak() -> None:
    """Whole requests through the compiled begin/run/done leave no exchange behind and
    keep no reference to what the server handed in."""
    from instrument.core.runtime import runtime

    mw = _middleware(True)
    rec = runtime.recorder

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/raise":  # a fresh one: a raised instance keeps its traceback
            raise LookupError(scope["path"])
        await _app(scope, receive, send)

    mw.app = app

    async def server_send(message: dict[str, Any]) -> None:
        return None

    scope_headers = [(b"x-request-id", b"leak-id"), (b"traceparent", TP)]

    async def requests(n: int) -> None:
        for i in range(n):
            try:
                await mw(_scope("/raise" if i % 3 == 0 else "/ok", scope_headers),
                         server_send, server_send)
            except LookupError:
                pass
            if i % 500 == 0:
                rec.drain(100_000)

    asyncio.run(requests(500))
    rec.drain(100_000)
    counts = [sys.getrefcount(o) for o in (server_send, scope_headers, mw._how)]
    asyncio.run(requests(3_000))
    rec.drain(100_000)
    gc.collect()
    assert [sys.getrefcount(o) for o in (server_send, scope_headers, mw._how)] == counts
    assert [o for o in gc.get_objects() if type(o) is asgi._Native
            and o.scope.get("headers") is scope_headers] == []
