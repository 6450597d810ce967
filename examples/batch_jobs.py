"""Decorated background jobs, sync and async: each call is timed and counted by name.

Run: ``python examples/batch_jobs.py``; the calls land in ``call_metrics``.
"""

from __future__ import annotations

import asyncio
import random
import time

import instrument


@instrument.timed(name="jobs.resize")
def resize(size: int) -> int:
    time.sleep(size / 10_000)
    if size % 7 == 0:
        raise ValueError(f"cannot resize {size}")
    return size // 2


@instrument.timed  # named after its module and qualname
async def fetch_prices(n: int) -> list[float]:
    await asyncio.sleep(0.01)
    return [random.random() for _ in range(n)]


def run(jobs: int = 20) -> dict[str, int]:
    done = failed = 0
    for size in range(1, jobs + 1):
        try:
            resize(size * 10)
            done += 1
        except ValueError:
            failed += 1

    async def fetch_all() -> None:
        await asyncio.gather(*(fetch_prices(5) for _ in range(5)))

    asyncio.run(fetch_all())
    with instrument.timer("jobs.report"):
        time.sleep(0.005)
    instrument.flush()
    return {"done": done, "failed": failed}


if __name__ == "__main__":
    print(run())
