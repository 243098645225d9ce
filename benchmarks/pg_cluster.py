"""A throwaway PostgreSQL server and ``imprint serve`` replica processes, for benchmarks.

``Postgres``: ``initdb``/``pg_ctl`` (Debian's PostgreSQL 15 binaries, via ``runuser -u postgres --``
when run as root) on a temporary folder, 127.0.0.1 on a free port, fsync on; ``freeze``/``thaw``
SIGSTOP/SIGCONT every PostgreSQL process. ``Replica``: ``python -m imprinting.cli serve MODEL
--store URL --port P`` on loopback with ``IMPRINTING_ENGINE=torch OMP_NUM_THREADS=1``.

Used by ``benchmarks/hung_database.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PG_BIN = Path(os.environ.get("IMPRINTING_PG_BIN", "/usr/lib/postgresql/15/bin"))


# -- a throwaway PostgreSQL (the same recipe as tests/serve/pg_server.py, copied: benchmarks do not
#    import the tests) ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def proc_state(pid: int) -> str:
    """The one-letter state of process ``pid`` (``T``: stopped), or ``?``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


class Postgres:
    """initdb + pg_ctl on a temporary folder owned by postgres; 127.0.0.1 only, a free port."""

    def __init__(self, folder: Path):
        missing = [p for p in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / p).is_file()]
        if missing:
            raise SystemExit(f"PostgreSQL not found: no {', '.join(missing)} in {PG_BIN} (apt-get install "
                             "postgresql-15, or set IMPRINTING_PG_BIN)")
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "server.log"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:  # PostgreSQL refuses to run as root
            shutil.chown(folder, "postgres", "postgres")
        self.started = False
        self.run(PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {folder} -c fsync=on "
                   "-c max_connections=100 -c shared_buffers=32MB")
        self.started = True  # from here on, stop() tries pg_ctl stop
        self.run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")
        self.version = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True,
                                      text=True, timeout=30, check=False).stdout.strip()

    def run(self, *cmd) -> None:
        cmd = [str(c) for c in cmd]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
        if result.returncode:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}\n{log}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def main_pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def children(self, main: int) -> list[int]:
        out = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            except OSError:
                continue
            if fields.get("PPid", "").strip() == str(main):
                out.append(int(status.parent.name))
        return out

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, walwriter, ...)."""
        main = self.main_pid()
        return [] if main is None else [main, *self.children(main)]

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster first (it can fork no new backend after), then every child,
        listed again until each one is stopped. Returns the stopped ids."""
        main = self.main_pid()
        if main is None:
            raise RuntimeError("PostgreSQL is not running")
        os.kill(main, signal.SIGSTOP)
        stopped = {main}
        for _ in range(20):  # bounded: a child forked just before the postmaster stopped is found here
            todo = [p for p in self.children(main) if p not in stopped]
            if not todo:
                break
            for pid in todo:
                try:
                    os.kill(pid, signal.SIGSTOP)
                    stopped.add(pid)
                except ProcessLookupError:
                    pass
        for _ in range(100):  # SIGSTOP is asynchronous: wait until the kernel shows them stopped
            if all(proc_state(p) in ("T", "t", "?", "Z") for p in stopped):
                break
            time.sleep(0.01)
        return sorted(stopped)

    def thaw(self) -> None:
        """SIGCONT the postmaster and every child (harmless when none is stopped)."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self.thaw()
        if self.started and self.pids():
            try:
                self.run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                for pid in self.pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


# -- the replicas ---------------------------------------------------------------------------
class Replica:
    """``python -m imprinting.cli serve MODEL --store URL --port P`` on loopback."""

    def __init__(self, label: str, model: Path, store: str, log: Path):
        self.label = label
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115  (open for the replica's life; closed in stop)
        env = dict(os.environ, IMPRINTING_ENGINE="torch", OMP_NUM_THREADS="1")
        env.pop("IMPRINT_TOKEN", None)
        env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.cmd = [sys.executable, "-m", "imprinting.cli", "serve", str(model), "--store", store,
                    "--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.label} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"replica {self.label} was not ready within {timeout:g} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

