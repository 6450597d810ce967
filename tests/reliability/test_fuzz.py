"""A bounded atheris (libFuzzer) run over requests, dashboard queries and settings.

atheris installs on this Python (3.11); the run is capped in iterations and
time so it fits ``make test``, and any crash fails the test with the input
libFuzzer saved. The target is ``tests/reliability/fuzz_target.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.reliability.harness import FIGURES

REPO = Path(__file__).resolve().parents[2]


def test_fuzz_requests_queries_and_settings(tmp_path: Path) -> None:
    """Thousands of coverage-guided inputs: no crash, no 5xx, no unsafe id, only ConfigError."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "tests.reliability.fuzz_target", "-runs=10000",
         "-max_total_time=12", "-max_len=2048", "-seed=1", f"-artifact_prefix={tmp_path}/",
         str(corpus)], cwd=REPO, capture_output=True, text=True, timeout=120)
    tail = run.stderr[-3000:]
    assert run.returncode == 0, tail
    done = re.search(r"Done (\d+) runs in (\d+) second", run.stderr)
    assert done is not None, tail
    runs = int(done.group(1))
    assert runs >= 1000, tail
    assert not list(tmp_path.glob("crash-*"))
    FIGURES["bad inputs tried: atheris runs"] += runs
