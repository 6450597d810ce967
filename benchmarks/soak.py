"""Soak: servers under sustained concurrent traffic; every answer stored, drops exact, memory flat.

Three servers run the same tiny app (it answers with its pid) for the whole run:

- ``gunicorn``: 4 gthread workers (4 threads each), default settings;
- ``uvicorn``: one process, the ASGI version of the app;
- ``small-buffer``: the same gunicorn with ``INSTRUMENT_BUFFER_SIZE=16``, a buffer
  deliberately too small, so samples are dropped and counted (threaded workers
  finish requests in bursts, which is what overflows a buffer), and its latency
  can be compared with ``gunicorn``'s.

A separate client process keeps keep-alive connections busy on all three for
``--duration`` seconds and counts every answer per server and per answering pid,
with latencies. Meanwhile this process samples each server process's RSS. Then
every server gets SIGTERM (a graceful stop) and the stores are read:

- gunicorn, uvicorn: rows per pid == answers per pid, exactly;
- small-buffer: rows + dropped == answers, per pid (each worker writes its
  final drop count at exit); the store's own ``kit_dropped`` counter agrees;
- memory: the largest RSS growth of any server process after the warm-up.

``--quick`` (about 40 s, part of ``make test`` through
``tests/reliability/test_load.py``) or the full run (5 minutes of traffic,
``make bench``). Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
from _common import parser, print_table, write_json

APP = textwrap.dedent('''
    import atexit, json, os
    from instrument.core.runtime import runtime
    from instrument.asgi import InstrumentMiddleware as ASGIInstrument
    from instrument.wsgi import InstrumentMiddleware

    def _wsgi(environ, start_response):
        body = str(os.getpid()).encode()
        missing = environ["PATH_INFO"].startswith("/missing")
        start_response("404 Not Found" if missing else "200 OK",
                       [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def _dump():  # the final drop count of this process, for the accounting
        if os.environ.get("SOAK_DUMP"):
            with open(os.path.join(os.environ["SOAK_DUMP"], f"{os.getpid()}.json"), "w") as f:
                json.dump({"dropped": runtime.recorder.dropped}, f)

    async def _asgi(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    _dump()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = str(os.getpid()).encode()
        status = 404 if scope["path"].startswith("/missing") else 200
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    wsgi_app = InstrumentMiddleware(_wsgi)
    asgi_app = ASGIInstrument(_asgi)
    atexit.register(_dump)  # after the kit's own hook, so it runs first
''')
PATHS = [f"/items/{i}" for i in range(20)] + ["/search", "/missing/page"]
SERVERS = {"gunicorn": 3, "uvicorn": 3, "small-buffer": 3}  # client threads per server


def _listen() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def start_servers(work: Path) -> dict[str, dict[str, Any]]:
    (work / "soakapp.py").write_text(APP)
    servers: dict[str, dict[str, Any]] = {}
    for name in SERVERS:
        sock = _listen()
        dump = work / f"dump-{name}"
        dump.mkdir()
        env = {**os.environ, "INSTRUMENT_METRICS_DB": str(work / f"{name}.db"),
               "SOAK_DUMP": str(dump)}
        env.pop("INSTRUMENT_BUFFER_SIZE", None)
        gunicorn = [sys.executable, "-m", "gunicorn", "--preload", "--workers", "4",
                    "--bind", f"fd://{sock.fileno()}", "--chdir", str(work),
                    "--graceful-timeout", "30", "--log-level", "warning"]
        if name in ("gunicorn", "small-buffer"):
            cmd = [*gunicorn, "--worker-class", "gthread", "--threads", "4", "soakapp:wsgi_app"]
            if name == "small-buffer":
                env["INSTRUMENT_BUFFER_SIZE"] = "16"
        else:
            cmd = [sys.executable, "-m", "uvicorn", "soakapp:asgi_app", "--fd",
                   str(sock.fileno()), "--app-dir", str(work), "--log-level", "warning",
                   "--no-access-log", "--timeout-graceful-shutdown", "30"]
        log = (work / f"{name}.log").open("wb")
        proc = subprocess.Popen(cmd, env=env, pass_fds=[sock.fileno()], stdout=log,
                                stderr=subprocess.STDOUT)
        servers[name] = {"proc": proc, "port": sock.getsockname()[1], "db": work / f"{name}.db",
                         "dump": dump, "log": work / f"{name}.log"}
        sock.close()
    deadline = time.monotonic() + 60
    for s in servers.values():
        want = 4 if s["proc"].args[2] == "gunicorn" else 0
        while len(psutil.Process(s["proc"].pid).children()) < want:
            if time.monotonic() > deadline or s["proc"].poll() is not None:
                raise RuntimeError(f"server did not start: {s['log'].read_text()[-2000:]}")
            time.sleep(0.05)
    return servers


def processes(server: dict[str, Any]) -> list[psutil.Process]:
    master = psutil.Process(server["proc"].pid)
    children = master.children()
    return children if children else [master]


# -- the client process ---------------------------------------------------------------------
def client(ports: dict[str, int], duration: float, out: str) -> None:
    stop = time.monotonic() + duration
    answered: dict[str, Counter[str]] = {name: Counter() for name in ports}
    errors: dict[str, Counter[str]] = {name: Counter() for name in ports}
    latency: dict[str, list[float]] = {name: [] for name in ports}
    lock = threading.Lock()

    def run(name: str, seed: int) -> None:
        rnd = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", ports[name], timeout=30)
        while time.monotonic() < stop:
            path = rnd.choice(PATHS)
            t0 = time.perf_counter()
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
                ok = r.status == (404 if path.startswith("/missing") else 200)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                with lock:
                    errors[name][type(exc).__name__] += 1
                continue
            spent = time.perf_counter() - t0
            with lock:
                if ok:
                    answered[name][body.decode()] += 1
                    if rnd.random() < 0.2:
                        latency[name].append(spent)
                else:
                    errors[name][f"HTTP {r.status}"] += 1
        conn.close()

    threads = [threading.Thread(target=run, args=(name, i * 31 + j))
               for i, (name, count) in enumerate(SERVERS.items()) for j in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Path(out).write_text(json.dumps({"answered": answered, "errors": errors,
                                     "latency": latency}))


# -- checks ---------------------------------------------------------------------------------
def stored(db: Path) -> tuple[Counter[str], int]:
    conn = sqlite3.connect(str(db))
    try:
        rows = Counter({str(pid): n for pid, n in conn.execute(
            "SELECT pid, COUNT(*) FROM api_metrics GROUP BY pid")})
        kit = conn.execute("SELECT COALESCE(SUM(value), 0) FROM metric_total_counters"
                           " WHERE metric = 'kit_dropped'").fetchone()[0]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return rows, int(kit)
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, help="seconds of traffic (default 300, quick 25)")
    p.add_argument("--client", nargs=3, metavar=("PORTS", "DURATION", "OUT"),
                   help=argparse.SUPPRESS)  # the client process runs this script too
    args = p.parse_args()
    if args.client:
        client(json.loads(args.client[0]), float(args.client[1]), args.client[2])
        return 0
    duration = args.duration or (25.0 if args.quick else 300.0)
    warmup = min(60.0, duration / 3)
    work = Path(tempfile.mkdtemp(prefix="instrument-soak-"))
    servers = start_servers(work)
    out = work / "client.json"
    ports = {name: s["port"] for name, s in servers.items()}
    started = time.monotonic()
    load = subprocess.Popen([sys.executable, __file__, "--client", json.dumps(ports),
                             str(duration), str(out)])
    rss: dict[str, dict[int, list[tuple[float, int]]]] = {n: {} for n in servers}
    while load.poll() is None:
        for name, s in servers.items():
            for proc in processes(s):
                try:
                    rss[name].setdefault(proc.pid, []).append(
                        (time.monotonic() - started, proc.memory_info().rss))
                except psutil.NoSuchProcess:
                    pass
        time.sleep(1.0)
    for s in servers.values():
        s["proc"].send_signal(signal.SIGTERM)
    codes = {name: s["proc"].wait(60) for name, s in servers.items()}
    report = json.loads(out.read_text())
    results: dict[str, Any] = {"duration_s": duration, "warmup_s": warmup, "servers": {}}
    failures: list[str] = []
    for name, s in servers.items():
        answered = Counter(report["answered"][name])
        rows, kit_dropped = stored(s["db"])
        dropped = Counter({f.stem: json.loads(f.read_text())["dropped"]
                           for f in s["dump"].glob("*.json")})
        dropped = Counter({pid: dropped[pid] for pid in answered})  # the masters served nothing
        growth = [max(v for t, v in series if t >= warmup) - next(v for t, v in series
                                                                   if t >= warmup)
                  for series in rss[name].values() if any(t >= warmup for t, _ in series)]
        lat = report["latency"][name]
        r = {"answered": sum(answered.values()), "stored": sum(rows.values()),
             "dropped": sum(dropped.values()), "kit_dropped_in_store": kit_dropped,
             "client_errors": report["errors"][name], "exit_code": codes[name],
             "rss_growth_after_warmup_kib": max(growth, default=0) // 1024,
             "rss_end_mib": round(max((series[-1][1] for series in rss[name].values()),
                                      default=0) / 2**20, 1),
             "latency_p50_ms": percentile(lat, 0.5), "latency_p99_ms": percentile(lat, 0.99),
             "requests_per_s": sum(answered.values()) / duration,
             "exact_per_pid": all(rows[pid] + dropped[pid] == n for pid, n in answered.items())
             and not set(rows) - set(answered)}
        results["servers"][name] = r
        if not r["exact_per_pid"]:
            failures.append(f"{name}: stored + dropped != answered per pid "
                            f"({dict(rows)} + {dict(dropped)} vs {dict(answered)})")
        if name != "small-buffer" and r["dropped"]:
            failures.append(f"{name}: {r['dropped']} samples dropped with the default buffer")
        if name == "small-buffer" and r["dropped"] != kit_dropped:
            failures.append(f"{name}: store counted {kit_dropped} drops, workers {r['dropped']}")
        if r["answered"] == 0:
            failures.append(f"{name}: no request answered")
    results["failures"] = failures
    print_table(["server", "answered", "stored", "dropped", "exact", "req/s", "p50 ms",
                 "p99 ms", "RSS growth KiB", "RSS MiB"],
                [[n, r["answered"], r["stored"], r["dropped"],
                  "yes" if r["exact_per_pid"] else "NO",
                  round(r["requests_per_s"]), round(r["latency_p50_ms"], 2),
                  round(r["latency_p99_ms"], 2), r["rss_growth_after_warmup_kib"], r["rss_end_mib"]]
                 for n, r in results["servers"].items()],
                title=f"soak: {duration:g} s of traffic, RSS growth measured after {warmup:g} s")
    for failure in failures:
        print("FAIL:", failure)
    write_json(args.json, results)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
