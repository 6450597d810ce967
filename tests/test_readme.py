"""Every ```python block of README.md runs, so the copy-paste instructions cannot rot.

Each block runs on its own in a fresh interpreter, with a temporary directory as
its working directory and the metrics file in it, and must exit 0. A block may
be kept from running only by an HTML comment ``<!-- no-exec -->`` on the line
right before its fence, and only when it needs a service the tests cannot run
(a real SMTP account, a Slack workspace); such a block must still compile.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from instrument._envdoc import render_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
NO_EXEC = "<!-- no-exec -->"


@dataclass(frozen=True)
class Block:
    """One fenced Python block: where it starts, its code, and whether it may run."""

    line: int  # 1-based line of the opening fence
    code: str
    run: bool


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = lines[i].strip()
        if fence.startswith("```") and fence[3:].strip().lower() in ("python", "py", "python3"):
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise ValueError(f"README.md:{start + 1}: the python block is never closed")
            skip = start > 0 and lines[start - 1].strip() == NO_EXEC
            blocks.append(Block(start + 1, "\n".join(body) + "\n", not skip))
        i += 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8")) if README.exists() else []


def test_readme_has_python_blocks_to_run() -> None:
    """README.md exists and teaches with Python blocks, most of which the tests run."""
    assert BLOCKS, "README.md has no ```python blocks"
    assert sum(b.run for b in BLOCKS) >= len(BLOCKS) / 2, "most blocks must run"


def test_no_exec_marker_only_precedes_python_fences() -> None:
    """Every no-exec marker sits right above a python block (a stray one would hide nothing)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if line.strip() == NO_EXEC:
            nxt = lines[n + 1].strip() if n + 1 < len(lines) else ""
            assert nxt.startswith("```py"), f"README.md:{n + 1}: {NO_EXEC} not above a python block"


def test_python_blocks_parse_into_blocks() -> None:
    """The block reader finds fences, their code and the marker, as the harness relies on."""
    text = ("x\n```python\nprint(1)\n```\n<!-- no-exec -->\n```python\nsend()\n```\n"
            "```bash\nls\n```\n")
    assert python_blocks(text) == [Block(2, "print(1)\n", True), Block(6, "send()\n", False)]


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line-{b.line}" for b in BLOCKS])
def test_readme_block(block: Block, tmp_path: Path) -> None:
    """The block runs to completion in a fresh interpreter (or, if marked no-exec, compiles)."""
    name = f"README.md:{block.line}"
    if not block.run:
        compile(block.code, name, "exec")
        return
    script = tmp_path / f"readme_line_{block.line}.py"
    script.write_text(block.code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("INSTRUMENT_") and k not in ("METRICS_DB_PATH", "ALERTS_DB_PATH")}
    env["INSTRUMENT_METRICS_DB"] = str(tmp_path / "metrics.db")
    try:
        done = subprocess.run([sys.executable, script.name], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{name}: still running after {exc.timeout}s (does it serve forever?)")
    assert done.returncode == 0, (
        f"{name} exited {done.returncode}\n--- code ---\n{block.code}\n--- stderr ---\n"
        f"{done.stderr[-3000:]}")


def test_readme_configuration_table_is_the_generated_one() -> None:
    """README.md holds the table ``python -m instrument._envdoc markdown`` prints, row for row."""
    text = README.read_text(encoding="utf-8")
    missing = [row for row in render_markdown().splitlines() if row not in text]
    assert not missing, ("README.md's configuration table is out of date; paste the output of"
                         " `python -m instrument._envdoc markdown`. Missing rows:\n"
                         + "\n".join(missing))
