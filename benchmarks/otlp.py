"""OTLP export cost: what the flusher thread spends adding batches up and exporting them.

The request path pays nothing for OTLP (the exporter is a backend: only the
flusher calls it). This measures the flusher's side on the seeded mix of
``benchmarks/flusher.py`` (15 routes, 4 methods, 10 statuses, ``@timed`` and
client calls): ``write`` (adding one batch of aggregates to the running totals,
per sample) and ``export`` (building the protobuf request, serialising it and
POSTing it to a real HTTP receiver on 127.0.0.1 that reads the body and answers
200), with the series count and the payload size, cumulative and delta.

Run: ``python benchmarks/otlp.py [--quick] [--samples N] [--json PATH]``.
"""

from __future__ import annotations

import http.server
import statistics
import threading
import time
from typing import Any

from _common import parser, print_table, write_json
from flusher import batches, make_samples

from instrument.backends.otlp import OTLPBackend
from instrument.core.aggregate import Aggregator

BATCH = 16_384


class _Receiver(http.server.BaseHTTPRequestHandler):
    sizes: list[int] = []

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        _Receiver.sizes.append(n)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def run(temporality: str, samples: list[tuple[Any, ...]], url: str,
        exports: int) -> dict[str, Any]:
    backend = OTLPBackend(url, interval=3600, temporality=temporality)
    agg = Aggregator(raw_rows=False)
    parts = list(batches(samples, BATCH))
    write_cpu = 0.0
    export_ms: list[float] = []
    per_export = max(1, len(parts) // exports)
    for i, part in enumerate(parts):
        batch = agg.aggregate(part)
        c0 = time.thread_time()
        backend.write(batch)
        write_cpu += time.thread_time() - c0
        if (i + 1) % per_export == 0:
            w0 = time.perf_counter()
            backend.export()
            export_ms.append((time.perf_counter() - w0) * 1000)
    series = len(backend._totals)
    return {"temporality": temporality, "write_us_per_sample": write_cpu / len(samples) * 1e6,
            "export_ms_median": statistics.median(export_ms), "exports": len(export_ms),
            "series": series, "payload_bytes": _Receiver.sizes[-1]}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=400_000)
    args = p.parse_args()
    n = 20_000 if args.quick else args.samples
    samples = make_samples(n)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/metrics"
    try:
        results = [run(t, samples, url, 2 if args.quick else 12) for t in ("cumulative", "delta")]
    finally:
        server.shutdown()
    print_table(["temporality", "write µs/sample", "export ms (median)", "exports", "series",
                 "payload bytes"],
                [[r["temporality"], r["write_us_per_sample"], r["export_ms_median"], r["exports"],
                  r["series"], r["payload_bytes"]] for r in results],
                title=f"OTLP export on the flusher thread ({n:,} samples, {BATCH:,} a batch)")
    write_json(args.json, {"benchmark": "otlp", "quick": args.quick, "samples": n,
                           "results": results})


if __name__ == "__main__":
    main()
