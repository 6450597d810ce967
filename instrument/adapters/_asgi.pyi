# The compiled exchange (_asgi.c); asgi.py holds its pure-Python twin and documentation.
from collections.abc import Awaitable, Generator
from typing import Any

class Exchange:
    _receive: Any
    _send: Any
    scope: Any
    status: Any
    rid: Any
    tp: Any
    in_rid: Any
    in_tp: Any
    qb: int
    rb: int
    tf: float
    t_end: float
    disc: bool
    def __init__(self, scope: Any = ..., receive: Any = ..., send: Any = ...,
                 ids: int = ...) -> None: ...
    def send(self, message: Any) -> Awaitable[None]: ...
    def record(self, t0: float, t1: float, exc: BaseException | None, resolve: Any,
               templates: dict[int, tuple[Any, str]], root0: str) -> None: ...

def bind(recorder: Any, extend: Any, until: list[float], default: list[float],
         cuts: dict[Any, float], exc_key: str, kind_http: str) -> None: ...
def bind_trace(span_chunk: Any, fresh: Any, continued_bytes: Any,
               ids_popleft: Any, new_id: Any, incoming_id: Any) -> None: ...
def forget_spans() -> None: ...

class LastSend:
    def __await__(self) -> Generator[Any]: ...
    def send(self, value: Any) -> Any: ...
    def throw(self, *args: Any) -> Any: ...
    def close(self) -> None: ...
