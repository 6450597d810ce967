"""Build hook: compile the kit's optional C helpers (``instrument/**/_*.c``) in place.

Each helper has a pure-Python twin that the kit uses when the helper is missing, so a
machine without a C compiler still installs and runs the kit, only slower; a failed
compile is reported and skipped, never fatal. ``INSTRUMENT_BUILD_NATIVE=false`` skips
it on purpose. The extension lands next to its source, so an editable install
(``pip install -e .``) imports it from the tree, and a wheel carries it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCES = ("instrument/adapters/_asgi.c", "instrument/adapters/_wsgi.c",
           "instrument/core/_trace.c")
_OFF = {"0", "false", "no", "off"}


def compile_one(root: Path, source: str) -> Path:
    """Compile ``source`` (relative to ``root``) into an extension module beside it."""
    src = root / source
    out = src.with_name(src.stem + sysconfig.get_config_var("EXT_SUFFIX"))
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    cmd = [*cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror=implicit-function-declaration",
           f"-I{sysconfig.get_paths()['include']}", str(src), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


class NativeHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        if os.environ.get("INSTRUMENT_BUILD_NATIVE", "").strip().lower() in _OFF:
            return
        root = Path(self.root)
        built = []
        for source in SOURCES:
            try:
                built.append(compile_one(root, source))
            except (OSError, subprocess.CalledProcessError) as e:
                detail = getattr(e, "stderr", "") or str(e)
                print(f"instrument: {source} not compiled, its pure-Python twin is used: "
                      f"{detail.strip()[:2000]}", file=sys.stderr)
        if not built:
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            for out in built:
                build_data["force_include"][str(out)] = str(out.relative_to(root))
