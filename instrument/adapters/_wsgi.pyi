# The compiled WSGI exchange (_wsgi.c); wsgi.py holds its pure-Python twin and documentation.
from typing import Any

class Exchange(list[bytes]):
    _sr: Any
    _w: Any
    env: Any
    exc: Any
    inp: Any
    rid: Any
    route: Any
    status: Any
    tok: Any
    tp: Any
    rb: int
    t0: float
    tf: float
    done: bool
    def __init__(self, environ: Any = ..., start_response: Any = ..., t0: float = ...,
                 route: Any = ..., ids: int = ...) -> None: ...
    def start_response(self, status: str, headers: Any, exc_info: Any = ...) -> Any: ...
    def _counting_write(self, data: bytes) -> Any: ...
    def close(self) -> None: ...

def bind(*args: Any) -> None: ...
def bind_trace(span_chunk: Any, fresh: Any, continued: Any,
               ids_popleft: Any, new_id: Any, incoming_id: Any) -> None: ...
def forget_spans() -> None: ...
