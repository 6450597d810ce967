"""``@timed`` and ``timer()``: function and block timing that is right for ``async def``.

Built on wrapt, so signatures, ``inspect`` checks and introspection survive.
Coroutine functions are timed across their awaits, generators from the call to
their exhaustion or close; exceptions pass through unchanged and are counted.
A call costs two clock reads and one buffer append.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from time import perf_counter
from types import FunctionType, MethodType, TracebackType
from typing import Any, TypeVar, overload

from instrument.core.buffer import KIND_CALL
from instrument.core.runtime import ON, UNSTARTED, runtime

__all__ = ["timed", "timer"]

F = TypeVar("F", bound=Callable[..., Any])

_rt = runtime
_rec = runtime.recorder


def _live() -> bool:
    if _rt.state == UNSTARTED:
        _rt.ensure_started()
    return _rt.state == ON


def _unwrap(func: Any) -> Any:
    # @timed may sit above @classmethod/@staticmethod or wrap a partial: look at the
    # function underneath, or an async classmethod would be timed as a sync call.
    while True:
        if isinstance(func, functools.partial):
            func = func.func
        elif isinstance(func, (classmethod, staticmethod)):
            func = func.__func__
        else:
            return func


def _make_wrapper(func: Callable[..., Any], name: str) -> Callable[..., Any]:
    target = _unwrap(func)
    rec = _rec
    add = rec.add
    buf = rec.buf  # cleared in place, never replaced

    if inspect.isasyncgenfunction(target):
        def agen_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if _rt.state != ON and not _live():
                return wrapped(*args, **kwargs)
            return _timed_agen(wrapped(*args, **kwargs), name, perf_counter())
        return agen_wrapper

    if inspect.isgeneratorfunction(target):
        def gen_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if _rt.state != ON and not _live():
                return wrapped(*args, **kwargs)
            return _timed_gen(wrapped(*args, **kwargs), name, perf_counter())
        return gen_wrapper

    if inspect.iscoroutinefunction(target):
        async def async_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if _rt.state != ON and not _live():
                return await wrapped(*args, **kwargs)
            t0 = perf_counter()
            try:
                result = await wrapped(*args, **kwargs)
            except BaseException as e:
                add((KIND_CALL, t0, perf_counter(), name, e))
                raise
            add((KIND_CALL, t0, perf_counter(), name, None))
            return result
        return async_wrapper

    def sync_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if _rt.state != ON and not _live():
            return wrapped(*args, **kwargs)
        t0 = perf_counter()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as e:
            add((KIND_CALL, t0, perf_counter(), name, e))
            raise
        # Recorder.add inlined on the success path: the call would cost as much as the work
        n = len(buf)
        if n < rec.cap:
            buf.extend((KIND_CALL, t0, perf_counter(), name, None))  # flat: see _buffer
            if rec.high <= n < rec.high_end:
                rec.wake()
        else:
            next(rec.drops)
        return result
    return sync_wrapper


def _timed_gen(gen: Iterator[Any], name: str, t0: float) -> Iterator[Any]:
    exc: BaseException | None = None
    try:
        return (yield from gen)
    except GeneratorExit:
        raise
    except BaseException as e:
        exc = e
        raise
    finally:
        _rec.add((KIND_CALL, t0, perf_counter(), name, exc))


async def _timed_agen(agen: AsyncIterator[Any], name: str, t0: float) -> AsyncIterator[Any]:
    exc: BaseException | None = None
    asend = agen.asend  # type: ignore[attr-defined]
    athrow = agen.athrow  # type: ignore[attr-defined]
    try:
        value: Any = None
        pending: BaseException | None = None
        while True:
            try:
                item = await (athrow(pending) if pending is not None else asend(value))
            except StopAsyncIteration:
                return
            pending = None
            try:
                value = yield item
            except GeneratorExit:
                await agen.aclose()  # type: ignore[attr-defined]
                raise
            except BaseException as e:
                pending = e
    except GeneratorExit:
        raise
    except BaseException as e:
        exc = e
        raise
    finally:
        _rec.add((KIND_CALL, t0, perf_counter(), name, exc))


_bases: list[type] = []  # the wrapt.FunctionWrapper subclass below, built on first use


def _timed_base() -> type:
    """wrapt's proxy (signature, ``inspect`` checks, binding), minus its per-call cost.

    wrapt's C ``__call__`` looks up ``wrapped.__self__`` on every call; on a plain
    function that raises and swallows an AttributeError, about 1 µs on CPython 3.11,
    more than the timing itself, and binding a method allocates a BoundFunctionWrapper
    per attribute access. Each decorated callable gets its own subclass whose
    ``__call__`` calls the timing wrapper directly (the wrappers ignore ``instance``),
    and for a plain function a ``__get__`` that binds the way a function does.

    wrapt is imported here, at the first ``@timed``, not with the package: it pulls in
    asyncio and importlib.metadata, ~3 MB of resident memory a WSGI app never needs.
    """
    if not _bases:
        import wrapt

        class _TimedFunction(wrapt.FunctionWrapper):
            __slots__ = ()

        _bases.append(_TimedFunction)
    return _bases[0]


def _proxy_class(func: Any, wrapper: Callable[..., Any], name: str) -> type:
    if wrapper.__name__ == "sync_wrapper":
        __call__ = _sync_call(func, name)
    else:
        def __call__(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            return wrapper(func, None, args, kwargs)

    namespace: dict[str, Any] = {"__slots__": (), "__call__": __call__}
    if type(func) is FunctionType:
        def __get__(self: Any, instance: Any, owner: Any = None) -> Any:
            return self if instance is None else MethodType(self, instance)
        namespace["__get__"] = __get__
    return type("TimedFunction", (_timed_base(),), namespace)


def _sync_call(func: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``__call__`` for a plain function: ``sync_wrapper``'s work in this one frame."""
    rec = _rec
    buf = rec.buf  # cleared in place, never replaced
    add = rec.add

    def __call__(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        if _rt.state != ON and not _live():
            return func(*args, **kwargs)
        t0 = perf_counter()
        try:
            result = func(*args, **kwargs)
        except BaseException as e:
            add((KIND_CALL, t0, perf_counter(), name, e))
            raise
        n = len(buf)  # Recorder.add inlined, as in sync_wrapper
        if n < rec.cap:
            buf.extend((KIND_CALL, t0, perf_counter(), name, None))  # flat: see _buffer
            if rec.high <= n < rec.high_end:
                rec.wake()
        else:
            next(rec.drops)
        return result
    return __call__


@overload
def timed(func: F, /) -> F: ...
@overload
def timed(*, name: str | None = None) -> Callable[[F], F]: ...


def timed(func: Any = None, /, *, name: str | None = None) -> Any:
    """Time every call of a function: ``@timed`` or ``@timed(name="jobs.resize")``.

    The name defaults to ``module.qualname``. Works on plain, ``async def``,
    generator and async generator functions, and on methods.
    """

    def decorate(f: Any) -> Any:
        t = _unwrap(f)
        label = name or f"{getattr(t, '__module__', '?')}.{getattr(t, '__qualname__', repr(t))}"
        wrapper = _make_wrapper(f, label)
        return _proxy_class(f, wrapper, label)(f, wrapper)

    if func is None:
        return decorate
    if isinstance(func, str):
        raise TypeError("use @timed(name=...) to give a name")
    return decorate(func)


class timer:
    """Time a block: ``with timer("cache.rebuild"):`` or ``async with timer(...)``."""

    __slots__ = ("name", "t0")

    def __init__(self, name: str) -> None:
        self.name = name
        self.t0 = 0.0

    def __enter__(self) -> timer:
        _live()
        self.t0 = perf_counter()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if _rt.state == ON:
            _rec.add((KIND_CALL, self.t0, perf_counter(), self.name,
                      ev if ev is not None else et))

    async def __aenter__(self) -> timer:
        return self.__enter__()

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(et, ev, tb)
