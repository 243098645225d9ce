"""A throwaway PostgreSQL server for the tests (Debian's ``postgresql`` package, 15).

``initdb`` and ``pg_ctl`` run on a temporary folder (``runuser -u postgres`` when the tests run
as root, since PostgreSQL refuses to run as root), listening on 127.0.0.1 on a free port and on
a unix socket in that folder; fsync stays on, as the durability tests need. One server serves
the whole test session (started on first use, stopped at its end); each test gets a database of
its own. The ``postgres`` fixture skips with the reason when the binaries are absent.

Test modules import the fixtures: ``from serve.pg_server import pg_url, postgres  # noqa: F401``.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest



def _pg_bin() -> Path:
    """$IMPRINTING_PG_BIN, else Debian's PostgreSQL 15, else the newest Debian PostgreSQL installed."""
    if os.environ.get("IMPRINTING_PG_BIN"):
        return Path(os.environ["IMPRINTING_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    default = Path("/usr/lib/postgresql/15/bin")
    return default if (default / "initdb").is_file() or not found else found[-1].parent


PG_BIN = _pg_bin()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl on a temporary folder; ``kill`` is a crash (SIGKILL of every server process)."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="imprint-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._names = itertools.count()
        self._run(PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self.start()

    def _run(self, *cmd) -> None:
        cmd = [str(c) for c in cmd]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}\n{self.server_log()}")

    def server_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists() and not self.pids():  # left by a crash: its process is dead, or a zombie
            for stale in (pid_file, self.folder / f".s.PGSQL.{self.port}.lock"):  # PostgreSQL takes for alive
                stale.unlink(missing_ok=True)
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=on "
                   "-c max_connections=100 -c shared_buffers=32MB")
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, ...)."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return []
        main = int(pid_file.read_text().split()[0])
        if not _alive(main):
            return []  # a stale file, left by a crash
        children = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            except OSError:
                continue
            if fields.get("PPid", "").strip() == str(main):
                children.append(int(status.parent.name))
        return [main, *children]

    def kill(self) -> None:
        """A crash: SIGKILL the postmaster and each of its children, by id; wait until the port is closed."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not any(_alive(p) for p in pids):
                return
            time.sleep(0.02)
        raise RuntimeError("PostgreSQL processes still alive 10 s after SIGKILL")

    def freeze(self) -> None:
        """A hang: SIGSTOP the postmaster and every child (connections stay open, nothing answers)."""
        for pid in self.pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT every process ``freeze`` stopped."""
        for pid in self.pids():
            os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        if self.pids():
            try:
                self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
            except RuntimeError:
                self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"imprint_test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


_server: PostgresServer | None = None


def server() -> PostgresServer:
    """The session's server, started on first use (stopped when the tests end)."""
    global _server
    missing = [p for p in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / p).is_file()]
    if missing:
        pytest.skip(f"PostgreSQL not found: no {', '.join(missing)} in {PG_BIN} "
                    "(apt-get install postgresql, or set IMPRINTING_PG_BIN)")
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'imprinting[postgres]'")
    if _server is None:
        _server = PostgresServer()
        atexit.register(_server.stop)
    return _server


@pytest.fixture(scope="session")
def postgres():
    yield server()
    if _server is not None:
        _server.stop()


@pytest.fixture
def pg_url(postgres) -> str:
    """A fresh database on the session's server (restarted first if a test crashed it)."""
    if not postgres.pids():
        postgres.start()
    return postgres.new_database()
