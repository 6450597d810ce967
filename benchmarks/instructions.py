"""Per-request overhead in CPU instructions: a measure the VM's noise cannot move.

Wall-clock figures on a shared 2-core VM swing by 2x from run to run; an
instruction count does not. Each variant (bare app, the least possible
middleware, the kit) is run under valgrind's callgrind twice, with N and
N + DELTA requests; the difference divided by DELTA is what one request costs,
start-up and warm-up cancelled out. Flask's ``lists`` variant is the bare app
with only the adapter's response class (a whole bytes body handed to the
server as a list, not wrapped in werkzeug's generator and ``ClosingIterator``):
it shows what that saves the app, so ``kit - lists`` is the middleware's own cost.
``PYTHONHASHSEED`` is fixed so dict layouts, and so the counts, repeat exactly.
The flusher thread stays asleep (a long interval; the requests stay under the
buffer's high-water mark).

Needs ``valgrind`` (``make bench`` installs it). Run:
``python benchmarks/instructions.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from _common import parser, print_table, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
GROUPS = {
    "wsgi": ("bare", "floor", "kit"),
    "flask": ("bare", "lists", "kit"),
    "flask-dict": ("bare", "lists", "kit"),
    "flask-jsonify": ("bare", "lists", "kit"),
    "asgi": ("bare", "floor", "kit"),
    "starlette": ("bare", "kit"),
    "fastapi": ("bare", "kit"),
    "fastapi-model": ("bare", "kit"),
    # W3C trace context (issue 16): the kit without it, with it on a request that has no
    # traceparent (a trace is started), and on one that carries a valid traceparent
    "wsgi-trace": ("notrace", "kit", "incoming"),
    "asgi-trace": ("notrace", "kit", "incoming"),
    # the same request, carrying a valid traceparent, with trace context off and on: what
    # the feature adds, the header's own place in the environ or scope set aside
    "wsgi-trace-header": ("notrace", "incoming"),
    "asgi-trace-header": ("notrace", "incoming"),
    # exemplars (issue 14): off; on, once the flusher published its cuts (a request of a route
    # then pays the compares only); and a request that is a candidate (carries its details)
    "wsgi-exemplars": ("noexemplars", "kit", "candidate"),
    "asgi-exemplars": ("noexemplars", "kit", "candidate"),
    # Django's WSGI handler alone, with the kit's middleware first, with django-prometheus
    "django": ("bare", "kit", "django-prometheus"),
}
#: The incoming header of the ``incoming`` variants.
TRACEPARENT = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
#: The Flask view shape each Flask group measures (benchmarks/overhead.py FLASK_SHAPES).
FLASK_VIEWS = {"flask": "text", "flask-dict": "dict", "flask-jsonify": "jsonify"}


def _runner(group: str, variant: str) -> Any:
    """The driver of one variant, built like benchmarks/overhead.py builds it."""
    sys.path.insert(0, HERE)
    import overhead as ov
    from _common import asgi_runner, floor_asgi, floor_wsgi, wsgi_runner

    if group == "django":
        import _django
        return wsgi_runner(_django.handler(variant), _django.PATH)
    if group == "wsgi-exemplars":
        from instrument.wsgi import InstrumentMiddleware
        return wsgi_runner(InstrumentMiddleware(ov._hello), "/hello")
    if group == "asgi-exemplars":
        from instrument.asgi import InstrumentMiddleware as Asgi
        return asgi_runner(asyncio.new_event_loop(), Asgi(ov._asgi_hello), "/hello")
    header = TRACEPARENT if variant == "incoming" or group.endswith("-header") else None
    if group.startswith("wsgi-trace"):
        from instrument.wsgi import InstrumentMiddleware
        return wsgi_runner(InstrumentMiddleware(ov._hello), "/hello", header)
    if group.startswith("asgi-trace"):
        from instrument.asgi import InstrumentMiddleware as Asgi
        return asgi_runner(asyncio.new_event_loop(), Asgi(ov._asgi_hello), "/hello", header)
    if group == "wsgi" or group in FLASK_VIEWS:
        if group == "wsgi":
            from instrument.wsgi import InstrumentMiddleware
            app = {"bare": ov._hello, "floor": floor_wsgi(ov._hello)}.get(variant)
            return wsgi_runner(app or InstrumentMiddleware(ov._hello), "/hello")
        from instrument.adapters.flask import _response_class
        from instrument.flask import Instrument
        flask_app = ov._flask_app(FLASK_VIEWS[group])
        if variant == "kit":
            Instrument(flask_app)
        elif variant == "lists":  # only the adapter's response class: what werkzeug saves
            flask_app.response_class = _response_class(flask_app.response_class)
        return wsgi_runner(flask_app, "/items/42")
    from starlette.middleware import Middleware

    from instrument.asgi import InstrumentMiddleware as Asgi
    loop = asyncio.new_event_loop()
    if group == "asgi":
        app = {"bare": ov._asgi_hello, "floor": floor_asgi(ov._asgi_hello)}.get(variant)
        return asgi_runner(loop, app or Asgi(ov._asgi_hello), "/hello")
    middleware = [Middleware(Asgi)] if variant == "kit" else []
    app = ov._starlette_app(group.startswith("fastapi"), *middleware,
                            model=group == "fastapi-model")
    return asgi_runner(loop, app, "/items/42")


def _child(group: str, variant: str, n: int) -> None:
    import instrument
    instrument.configure(metrics_db=os.path.join(tempfile.mkdtemp(), "m.db"),
                         flush_interval=3600, trace_context=variant != "notrace",
                         exemplars=0 if variant == "noexemplars" else 5)
    run = _runner(group, variant)
    run(300)  # warm-up: caches, specialisation, lazily built middleware stacks
    from instrument.core import exemplars, trace
    # No flush() here (its wait loop would add a count that depends on the clock), so set
    # what the flusher publishes every second. Steady state ("kit"): the minute's end is
    # ahead and each route's cut is out, one no request reaches (a cut from the warm-up's
    # timings would make the count depend on how fast valgrind ran), so its requests pay
    # the compares and the cut's lookup only. "noexemplars": none of it (no cut, no end:
    # the request path skips the compares). "candidate": as at the start of a minute,
    # every request carries its details to the flusher.
    # Trace and span ids are minted ahead by the flusher every second; asleep here, it would
    # leave a long run minting its own (os.urandom) once the 2,048 ahead are used up.
    trace._AHEAD = 4096  # the same for both run lengths: minting them cancels out
    trace._CHUNKS_AHEAD = 16  # the compiled modules' span ids: 4,096 (the default)
    trace.top_up()
    from instrument.core.runtime import runtime
    routes = {s[4] for s in runtime.recorder.drain(10**6) if s[0] == "http"}
    exemplars.CUTS.clear()
    if variant == "candidate":
        exemplars.UNTIL[0] = 0.0
    elif variant == "noexemplars":
        exemplars.DEFAULT[0] = exemplars.UNTIL[0] = float("inf")
    else:
        exemplars.DEFAULT[0] = 0.0  # on: a route with no cut yet would be a candidate
        exemplars.UNTIL[0] = float("inf")
        exemplars.CUTS.update(dict.fromkeys(routes, float("inf")))
    run(n)
    os._exit(0)  # no shutdown flush: the count covers the requests only


def _count(group: str, variant: str, n: int, repeats: int = 2) -> int:
    """The fewest instructions of ``repeats`` runs: background threads (the flusher waking,
    ids minted ahead) only ever add to a run, at moments that vary, so the minimum is the
    requests' own count and the difference of two lengths cannot be thrown off by one."""
    return min(_count_once(group, variant, n) for _ in range(repeats))


def _count_once(group: str, variant: str, n: int) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--child", group, variant, str(n)],
        capture_output=True, text=True, env=env, check=False)
    m = re.search(r"Collected : (\d+)", out.stderr)
    if not m:
        raise RuntimeError(f"callgrind gave no count for {group}/{variant}: {out.stderr[-500:]}")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2], int(argv[3]))
        return 0
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--group", action="append", choices=sorted(GROUPS),
                   help="count only this group (repeatable); default: all")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind; make bench does it)")
        return 1
    n, delta = (200, 400) if args.quick else (500, 2000)
    repeats = 1 if args.quick else 2  # --quick checks the shape, not the last few hundred
    chosen = args.group or (["wsgi"] if args.quick else list(GROUPS))
    groups = {g: GROUPS[g] for g in chosen}
    results: dict[str, dict[str, float]] = {}
    rows: list[list[Any]] = []
    for group, variants in groups.items():
        per = {v: (_count(group, v, n + delta, repeats) - _count(group, v, n, repeats)) / delta
               for v in variants}
        results[group] = per
        for v in variants:
            first = variants[0]
            rows.append([group, v, per[v], None if v == first else per[v] - per[first]])
    print_table(["group", "variant", "instructions/request", "added"], rows,
                title="CPU instructions per request (callgrind, difference of two run lengths)")
    write_json(args.json, {"benchmark": "instructions", "quick": args.quick, "groups": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
