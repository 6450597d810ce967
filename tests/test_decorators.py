"""``instrument.timed`` and ``instrument.timer``: names, function kinds, introspection, errors."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import instrument
from instrument.core.runtime import runtime
from instrument.testing import MemoryBackend


class CustomError(Exception):
    """An application error whose type name must show up in the rows."""


ERROR = CustomError("boom")


def _rows(memory: MemoryBackend, name: str) -> list[dict[str, Any]]:
    assert instrument.flush(5.0) is True
    return [r for r in memory.calls if r["name"] == name]


def _busy(seconds: float) -> None:
    """Work that takes a known minimum time (a sleep is the work being timed here)."""
    time.sleep(seconds)


@instrument.timed
def plain(a: int, b: int = 2, *, c: str = "x") -> str:
    """Plain docstring."""
    return f"{a}{b}{c}"


@instrument.timed(name="jobs.resize")
def named() -> int:
    return 1


@instrument.timed
async def coro(delay: float) -> str:
    """Coroutine docstring."""
    await asyncio.sleep(delay)
    return "done"


@instrument.timed
def gen(n: int) -> Iterator[int]:
    """Generator docstring."""
    for i in range(n):
        _busy(0.01)
        yield i
    return n * 10


@instrument.timed
async def agen(n: int) -> AsyncIterator[int]:
    """Async generator docstring."""
    for i in range(n):
        await asyncio.sleep(0.01)
        yield i


@instrument.timed
def raises() -> None:
    raise ERROR


class Service:
    """Methods of every kind, decorated above and below classmethod/staticmethod."""

    factor = 3

    @instrument.timed
    def method(self, x: int) -> int:
        return x * self.factor

    @instrument.timed
    async def amethod(self, x: int) -> int:
        await asyncio.sleep(0.02)
        return x * self.factor

    @classmethod
    @instrument.timed
    def cmethod(cls, x: int) -> int:
        return x * cls.factor

    @instrument.timed
    @classmethod
    async def acmethod_outer(cls, x: int) -> int:
        await asyncio.sleep(0.02)
        return x * cls.factor

    @instrument.timed
    @staticmethod
    def smethod(x: int) -> int:
        return x + 1


def test_bare_decorator_names_the_call_module_dot_qualname(memory: MemoryBackend) -> None:
    """@timed without arguments records under module.qualname and keeps the result."""
    assert plain(1, c="z") == "12z"
    (row,) = _rows(memory, f"{__name__}.plain")
    assert row["kind"] == "call" and row["exception"] is None and row["duration_ms"] >= 0


def test_name_argument_sets_the_recorded_name(memory: MemoryBackend) -> None:
    """@timed(name=...) records under the given name only."""
    assert named() == 1
    assert len(_rows(memory, "jobs.resize")) == 1
    assert _rows(memory, f"{__name__}.named") == []


def test_a_positional_string_is_refused() -> None:
    """@timed("x") is a mistake for @timed(name="x") and says so."""
    with pytest.raises(TypeError, match="name="):
        instrument.timed("jobs.x")  # type: ignore[call-overload]


def test_sync_duration_covers_the_call(memory: MemoryBackend) -> None:
    """A sync call taking 30 ms is recorded as at least 30 ms."""

    @instrument.timed(name="sync.slow")
    def slow() -> None:
        _busy(0.03)

    slow()
    (row,) = _rows(memory, "sync.slow")
    assert row["duration_ms"] >= 30


def test_async_function_is_timed_across_its_awaits(memory: MemoryBackend) -> None:
    """An async function that sleeps 50 ms records at least 50 ms."""
    assert asyncio.run(coro(0.05)) == "done"
    (row,) = _rows(memory, f"{__name__}.coro")
    assert row["duration_ms"] >= 50


def test_concurrent_coroutines_are_timed_separately(memory: MemoryBackend) -> None:
    """Two coroutines awaited together each record their own full duration."""

    async def both() -> list[str]:
        return list(await asyncio.gather(coro(0.05), coro(0.03)))

    assert asyncio.run(both()) == ["done", "done"]
    durations = sorted(r["duration_ms"] for r in _rows(memory, f"{__name__}.coro"))
    assert durations[0] >= 30 and durations[1] >= 50


def test_generator_duration_covers_iteration(memory: MemoryBackend) -> None:
    """A generator is recorded once, after exhaustion, with the time spent iterating."""
    it = gen(3)
    assert next(it) == 0
    assert _rows(memory, f"{__name__}.gen") == []
    assert list(it) == [1, 2]
    (row,) = _rows(memory, f"{__name__}.gen")
    assert row["duration_ms"] >= 30 and row["exception"] is None


def test_generator_return_value_reaches_the_caller() -> None:
    """The value a generator returns arrives in StopIteration unchanged."""
    it = gen(1)
    next(it)
    with pytest.raises(StopIteration) as info:
        next(it)
    assert info.value.value == 10


def test_generator_send_throw_and_close_work(memory: MemoryBackend) -> None:
    """send() reaches the generator, throw() is delivered, close() ends and records once."""
    cleaned: list[str] = []

    @instrument.timed(name="gen.echo")
    def echo() -> Iterator[Any]:
        value = yield "ready"
        try:
            while True:
                try:
                    value = yield f"got {value}"
                except ValueError as exc:
                    value = yield f"caught {exc}"
        finally:
            cleaned.append("finally")

    it = echo()
    assert next(it) == "ready"
    assert it.send(1) == "got 1"
    assert it.throw(ValueError("v")) == "caught v"
    assert it.send(2) == "got 2"
    it.close()
    assert cleaned == ["finally"]
    (row,) = _rows(memory, "gen.echo")
    assert row["exception"] is None


def test_generator_exception_passes_through_and_is_recorded(memory: MemoryBackend) -> None:
    """An exception thrown into or raised by a generator reaches the caller as the same object."""

    @instrument.timed(name="gen.fail")
    def fail() -> Iterator[int]:
        yield 1
        raise ERROR

    it = fail()
    next(it)
    with pytest.raises(CustomError) as info:
        next(it)
    assert info.value is ERROR

    thrown = KeyError("k")
    it2 = gen(5)
    next(it2)
    with pytest.raises(KeyError) as info2:
        it2.throw(thrown)
    assert info2.value is thrown
    assert [r["exception"] for r in _rows(memory, "gen.fail")] == ["CustomError"]
    assert [r["exception"] for r in _rows(memory, f"{__name__}.gen")] == ["KeyError"]


def test_async_generator_duration_covers_iteration(memory: MemoryBackend) -> None:
    """An async generator is recorded once, after exhaustion, covering its awaits."""

    async def consume() -> list[int]:
        return [i async for i in agen(3)]

    assert asyncio.run(consume()) == [0, 1, 2]
    (row,) = _rows(memory, f"{__name__}.agen")
    assert row["duration_ms"] >= 30 and row["exception"] is None


def test_async_generator_asend_athrow_and_aclose_work(memory: MemoryBackend) -> None:
    """asend() reaches the generator, athrow() is delivered, aclose() ends and records once."""
    cleaned: list[str] = []

    @instrument.timed(name="agen.echo")
    async def echo() -> AsyncIterator[Any]:
        value = yield "ready"
        try:
            while True:
                try:
                    await asyncio.sleep(0)
                    value = yield f"got {value}"
                except ValueError as exc:
                    value = yield f"caught {exc}"
        finally:
            cleaned.append("finally")

    async def drive() -> list[Any]:
        it = echo()
        out = [await it.asend(None), await it.asend(1), await it.athrow(ValueError("v")),
               await it.asend(2)]
        await it.aclose()
        return out

    assert asyncio.run(drive()) == ["ready", "got 1", "caught v", "got 2"]
    assert cleaned == ["finally"]
    (row,) = _rows(memory, "agen.echo")
    assert row["exception"] is None


def test_async_generator_exception_passes_through_and_is_recorded(
        memory: MemoryBackend) -> None:
    """An exception from an async generator, or thrown in, reaches the caller as the same object."""

    @instrument.timed(name="agen.fail")
    async def fail() -> AsyncIterator[int]:
        yield 1
        raise ERROR

    thrown = KeyError("k")

    async def drive() -> tuple[BaseException, BaseException]:
        it = fail()
        await it.__anext__()
        with pytest.raises(CustomError) as a:
            await it.__anext__()
        it2 = agen(5)
        await it2.__anext__()
        with pytest.raises(KeyError) as b:
            await it2.athrow(thrown)
        return a.value, b.value

    first, second = asyncio.run(drive())
    assert first is ERROR and second is thrown
    assert [r["exception"] for r in _rows(memory, "agen.fail")] == ["CustomError"]
    assert [r["exception"] for r in _rows(memory, f"{__name__}.agen")] == ["KeyError"]


def test_methods_of_every_kind_are_bound_and_named(memory: MemoryBackend) -> None:
    """Instance, class and static methods keep their binding and record Class.method names."""
    s = Service()
    assert s.method(2) == 6
    assert asyncio.run(s.amethod(2)) == 6
    assert Service.cmethod(3) == 9 and s.cmethod(1) == 3
    assert asyncio.run(Service.acmethod_outer(4)) == 12
    assert Service.smethod(1) == 2 and s.smethod(2) == 3
    prefix = f"{__name__}.Service."
    assert len(_rows(memory, prefix + "method")) == 1
    (arow,) = _rows(memory, prefix + "amethod")
    assert arow["duration_ms"] >= 20
    assert len(_rows(memory, prefix + "cmethod")) == 2
    (crow,) = _rows(memory, prefix + "acmethod_outer")
    assert crow["duration_ms"] >= 20  # timed across the await, not just coroutine creation
    assert len(_rows(memory, prefix + "smethod")) == 2


def test_partial_is_timed_as_its_function(memory: MemoryBackend) -> None:
    """A functools.partial of an async function is awaited and named after the function."""

    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0.02)
        return a + b

    timed_add = instrument.timed(functools.partial(add, 1))
    assert asyncio.run(timed_add(2)) == 3
    (row,) = _rows(memory, f"{__name__}.{add.__qualname__}")
    assert row["duration_ms"] >= 20


@pytest.mark.parametrize(("wrapped", "check"), [
    (plain, inspect.isfunction),
    (coro, inspect.iscoroutinefunction),
    (gen, inspect.isgeneratorfunction),
    (agen, inspect.isasyncgenfunction),
])
def test_introspection_is_preserved(wrapped: Any, check: Any) -> None:
    """Signature, __name__, __doc__, __wrapped__ and the inspect kind checks survive."""
    original = wrapped.__wrapped__
    assert check(wrapped)
    assert inspect.signature(wrapped) == inspect.signature(original)
    assert wrapped.__name__ == original.__name__
    assert wrapped.__qualname__ == original.__qualname__
    assert wrapped.__doc__ == original.__doc__ and wrapped.__doc__
    kinds = [inspect.iscoroutinefunction, inspect.isgeneratorfunction,
             inspect.isasyncgenfunction]
    assert [k(wrapped) for k in kinds] == [k(original) for k in kinds]


def test_bound_method_introspection_is_preserved() -> None:
    """A bound timed method drops self from its signature and stays a coroutine function."""
    s = Service()
    assert list(inspect.signature(s.amethod).parameters) == ["x"]
    assert inspect.iscoroutinefunction(s.amethod)
    assert inspect.iscoroutinefunction(Service.acmethod_outer)
    assert Service.method.__name__ == "method"


def test_sync_exception_passes_through_unchanged_and_is_recorded(memory: MemoryBackend) -> None:
    """The caller gets the very exception object; the row names its type and counts an error."""
    with pytest.raises(CustomError) as info:
        raises()
    assert info.value is ERROR
    (row,) = _rows(memory, f"{__name__}.raises")
    assert row["exception"] == "CustomError"
    assert memory.get_sample_value("call", f"{__name__}.raises", "errors") == 1


def test_async_exception_passes_through_unchanged_and_is_recorded(
        memory: MemoryBackend) -> None:
    """An exception raised after an await reaches the awaiting caller as the same object."""

    @instrument.timed(name="async.fail")
    async def fail() -> None:
        await asyncio.sleep(0.01)
        raise ERROR

    with pytest.raises(CustomError) as info:
        asyncio.run(fail())
    assert info.value is ERROR
    (row,) = _rows(memory, "async.fail")
    assert row["exception"] == "CustomError" and row["duration_ms"] >= 10


def test_timer_as_a_sync_context_manager(memory: MemoryBackend) -> None:
    """with timer(name): records the block's duration, and its exception by type name."""
    with instrument.timer("block.ok"):
        _busy(0.02)
    with pytest.raises(CustomError) as info, instrument.timer("block.fail"):
        raise ERROR
    assert info.value is ERROR
    (ok,) = _rows(memory, "block.ok")
    assert ok["duration_ms"] >= 20 and ok["exception"] is None
    (bad,) = _rows(memory, "block.fail")
    assert bad["exception"] == "CustomError"


def test_timer_as_an_async_context_manager(memory: MemoryBackend) -> None:
    """async with timer(name): covers the awaits inside the block."""

    async def block() -> None:
        async with instrument.timer("ablock"):
            await asyncio.sleep(0.03)

    asyncio.run(block())
    (row,) = _rows(memory, "ablock")
    assert row["duration_ms"] >= 30


def test_kill_switch_records_nothing() -> None:
    """configure(enabled=False) turns decorators and timers into pass-throughs."""
    instrument.configure(enabled=False)
    runtime.recorder.drain(10**9)
    assert plain(1) == "12x"
    assert asyncio.run(coro(0)) == "done"
    assert list(gen(2)) == [0, 1]

    async def consume() -> list[int]:
        return [i async for i in agen(2)]

    assert asyncio.run(consume()) == [0, 1]
    with pytest.raises(CustomError):
        raises()
    with instrument.timer("off"):
        pass
    assert len(runtime.recorder.buf) == 0
    assert instrument.stats()["enabled"] is False

    memory = MemoryBackend()
    instrument.configure(backends=[memory], flush_interval=60)
    plain(1)
    assert instrument.flush() is True
    assert [r["name"] for r in memory.calls] == [f"{__name__}.plain"]
