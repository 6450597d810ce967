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
    demo = sub.add_parser("demo",
                          help="run the example app under traffic and show what was recorded")
    demo.add_argument("--duration", type=_positive, default=None,
                      help="seconds of traffic (default: a fixed number of requests)")
    demo.add_argument("--requests", type=int, default=3000,
                      help="requests to send without --duration")
    demo.add_argument("--concurrency", type=int, default=8, help="client threads")
    demo.add_argument("--db", default=None, help="SQLite file (default: INSTRUMENT_METRICS_DB)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(duration=args.duration, total=args.requests,
                        concurrency=args.concurrency, db=args.db)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
