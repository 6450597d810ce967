"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl on a free loopback port.

The server binaries come from the Debian ``postgresql`` package
(``/usr/lib/postgresql/<version>/bin``). PostgreSQL refuses to run as root, so
when the tests run as root every server command runs as the ``postgres`` user
through ``runuser``, in a directory that user owns. Each test gets its own
schema (``search_path`` in the URL), which is far cheaper than a database.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = ["PgCluster", "pg_cluster"]


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries missing: apt-get install postgresql "
                           "(Makefile SYSTEM_PACKAGES)")
    return Path(found[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    """One running cluster: data directory, port and the commands to stop and start it."""

    root: Path
    port: int
    bindir: Path
    as_user: list[str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, schema: str | None = None) -> str:
        base = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if schema is None:
            return base
        return f"{base}?options={quote(f'-csearch_path={schema}')}"

    def new_schema(self) -> str:
        """A fresh, empty schema; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return self.url(name)

    def _ctl(self, *args: str, timeout: float = 60.0) -> None:
        cmd = [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]
        subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                " -c max_connections=50 -c shared_buffers=32MB")
        self._ctl("-l", str(self.root / "server.log"), "-o", opts, "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "-t", "30", "stop")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """Create, start and finally stop and delete a cluster (trust auth, loopback only)."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="instrument-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    cluster = PgCluster(root, _free_port(), bindir, as_user)
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(cluster.data), "-U",
                        "postgres", "--auth=trust", "-E", "UTF8", "--no-sync",
                        "--no-instructions"],
                       check=True, timeout=120, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
