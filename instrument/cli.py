"""The ``instrument`` command: ``instrument demo`` (and more as the kit grows)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instrument", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the example Flask and FastAPI apps under traffic,"
                          " provoke an alert, and show what the kit recorded")
    demo.add_argument("--duration", type=_positive, default=20.0,
                      help="seconds of traffic (default 20; the incident starts at 30%%)")
    demo.add_argument("--requests", type=int, default=None,
                      help="stop after this many requests (default: no cap)")
    demo.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    demo.add_argument("--db", default=None, help="SQLite file (default: INSTRUMENT_METRICS_DB);"
                      " the alert state and the JSON log go next to it")
    demo.add_argument("--no-traffic", action="store_true",
                      help="serve the instrumented apps for exploring by hand until Ctrl-C")
    dash = sub.add_parser("dashboard", help="serve the dashboard and REST API over the SQLite"
                          " files; prints a sign-in link (INSTRUMENT_DASHBOARD_TOKEN keeps"
                          " the token stable)")
    dash.add_argument("--db", default=None, help="metrics file or postgresql:// URL (default:"
                      " INSTRUMENT_STORAGE if a URL, else INSTRUMENT_METRICS_DB)")
    dash.add_argument("--alerts-db", default=None,
                      help="alerts file (default: INSTRUMENT_ALERTS_DB)")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    dash.add_argument("--port", type=int, default=3000, help="port (0 picks a free one)")
    dash.add_argument("--public", action="store_true",
                      help="no token needed (like INSTRUMENT_DASHBOARD_PUBLIC=true)")
    exp = sub.add_parser("exporter", help="serve the Prometheus exposition of the store's"
                         " totals (all workers of this machine) on /metrics")
    exp.add_argument("--port", type=int, default=9464, help="port (default 9464, 0: any free)")
    exp.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    exp.add_argument("--db", default=None, help="SQLite file (default: INSTRUMENT_METRICS_DB)")
    exp.add_argument("--storage", default=None,
                     help="postgresql:// URL (default: INSTRUMENT_STORAGE)")
    exp.add_argument("--all-hosts", action="store_true",
                     help="with PostgreSQL: the whole fleet's totals, not this host's")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from instrument._envcheck import warn_unknown

    warn_unknown()  # with no handler configured yet, logging's last resort prints it to stderr
    if args.command == "demo":
        from instrument.demo.run import DemoOptions, run_demo

        return run_demo(DemoOptions(duration=args.duration, requests=args.requests,
                                    concurrency=args.concurrency, db=args.db,
                                    no_traffic=args.no_traffic))
    if args.command == "dashboard":
        from instrument.dashboard.server import run

        return run(args.db, alerts_db=args.alerts_db, host=args.host, port=args.port,
                   public=args.public)
    if args.command == "exporter":
        from instrument.exporters.serve import run_exporter

        return run_exporter(db=args.db, storage=args.storage, host=args.host, port=args.port,
                            all_hosts=args.all_hosts)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
