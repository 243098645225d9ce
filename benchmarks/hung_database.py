"""Benchmark: two ``imprint serve`` replicas over one PostgreSQL store whose database hangs.

What it does, all on loopback:

1. starts a throwaway PostgreSQL 15 (Debian's binaries; ``initdb``/``pg_ctl`` via
   ``runuser -u postgres --`` when run as root, on a temporary folder, 127.0.0.1 on a free port,
   fsync on), makes a small random conv4 model (``torch.manual_seed(seed)``), and starts two
   replicas ``python -m imprinting.cli serve MODEL --store postgresql://... --port P`` with
   ``IMPRINTING_ENGINE=torch OMP_NUM_THREADS=1``;
2. teaches class ``kept`` (one generated 48x40 PNG) on replica A and waits until both replicas
   hold it and answer ``/ready`` 200;
3. **before**: one client sends ``POST /predict`` (one PNG) to replica A at ``--rate`` requests a
   second for ``--before-seconds``; ``/health`` and ``/ready`` of both replicas are polled every
   0.5 s;
4. **the hang**: SIGSTOP of every PostgreSQL process (the postmaster first, then its children,
   until none is left running) for ``--hang-seconds``; meanwhile the same prediction client
   goes on, a second client tries a write (``POST /classes/kept/examples``, one new PNG) on
   replica A once a second and records each answer's status and seconds, and the health poller
   goes on;
5. **recovery**: SIGCONT of every process; the writer tries again every 0.2 s until a write is
   answered 200 (seconds from SIGCONT to that answer), then ``/classes`` of both replicas is
   polled every 0.1 s until they agree with each other and with the database (read with plain
   psycopg) and both answer ``/ready`` 200 (seconds from SIGCONT).

Every loop is bounded (``--recovery-timeout``); everything it started (replicas, PostgreSQL,
its temporary folder) is stopped and removed on the way out, also on an error, Ctrl-C or
SIGTERM, and the database is never left stopped.

Percentiles are nearest-rank over the requests answered 200 (client wall time, keep-alive
connection). The machine may be shared: the load average is printed with the table.

Usage::

    .venv/bin/python benchmarks/hung_database.py [--hang-seconds 20] [--before-seconds 10] [--rate 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime
import io
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

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


# -- helpers ----------------------------------------------------------------------------------
def png(seed: int, size=(48, 40)) -> bytes:
    """A small generated PNG: one colour (from the seed) plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)[None, None, :] + rng.integers(-25, 26, (size[1], size[0], 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def files(name: str, data: bytes) -> list:
    return [("files", (name, data, "image/png"))]


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def make_model(folder: Path, seed: int) -> Path:
    import torch

    import imprinting

    torch.manual_seed(seed)
    model = imprinting.create_model("conv4", pretrained=False, class_names=["base_a", "base_b"])
    path = folder / "conv4.safetensors"
    imprinting.save(model, path)
    return path


def db_classes(url: str) -> dict[str, int]:
    """{class: example count} as PostgreSQL holds it, read with plain psycopg."""
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        return {n: c for n, c in conn.execute("SELECT name, count FROM imprint_classes").fetchall()}


def replica_classes(client: httpx.Client) -> dict[str, int] | None:
    try:
        r = client.get("/classes", timeout=5)
    except httpx.TransportError:
        return None
    if r.status_code != 200:
        return None
    return {c["name"]: c["examples"] for c in r.json()["classes"] if c["source"] == "store"}


class Recorder:
    """Timestamped samples from the client threads, tagged with the phase they fell in."""

    def __init__(self):
        self.phase = "setup"
        self.lock = threading.Lock()
        self.predictions: list[tuple[str, float, int, float]] = []  # (phase, t, status, seconds)
        self.writes: list[tuple[str, float, int, float, str]] = []  # (phase, t, status, seconds, error code)
        self.health: list[tuple[str, float, str, int, str, int, float]] = []
        # (phase, t, replica, /health status, store state, /ready status, /health seconds)
        self.stop = threading.Event()

    def add(self, kind: str, *row) -> None:
        with self.lock:
            getattr(self, kind).append((self.phase, *row))


def predictor(url: str, rec: Recorder, rate: float) -> None:
    """One client, ``rate`` requests a second (a fixed schedule; a slow answer delays the next)."""
    probe = png(10_001)
    period = 1.0 / rate
    with httpx.Client(base_url=url, timeout=30) as c:
        nxt = time.monotonic()
        while not rec.stop.is_set():
            t0 = time.perf_counter()
            try:
                status = c.post("/predict?k=3", files=files("probe.png", probe)).status_code
            except httpx.TransportError:
                status = 0
            rec.add("predictions", time.monotonic(), status, time.perf_counter() - t0)
            nxt += period
            rec.stop.wait(max(0.0, nxt - time.monotonic()))


def health_poller(replicas: list[Replica], rec: Recorder, every: float = 0.5) -> None:
    clients = [(r.label, httpx.Client(base_url=r.url, timeout=5)) for r in replicas]
    try:
        while not rec.stop.is_set():
            for label, c in clients:
                t0 = time.perf_counter()
                try:
                    h = c.get("/health")
                    seconds = time.perf_counter() - t0
                    state = h.json()["store"]["state"] if h.status_code == 200 else "-"
                    hs = h.status_code
                except (httpx.TransportError, ValueError, KeyError):
                    hs, state, seconds = 0, "-", time.perf_counter() - t0
                try:
                    ready = c.get("/ready").status_code
                except httpx.TransportError:
                    ready = 0
                rec.add("health", time.monotonic(), label, hs, state, ready, seconds)
            rec.stop.wait(every)
    finally:
        for _, c in clients:
            c.close()


class Writer:
    """Tries one upload to class ``kept`` per call, each with a new image."""

    def __init__(self, url: str, rec: Recorder):
        self.client = httpx.Client(base_url=url, timeout=60)
        self.rec = rec
        self.n = 0
        self.acknowledged = 0  # answered 200

    def write(self) -> tuple[int, float, str]:
        self.n += 1
        t0 = time.perf_counter()
        try:
            r = self.client.post("/classes/kept/examples", files=files(f"w{self.n}.png", png(20_000 + self.n)))
            status = r.status_code
            code = r.json().get("error", "") if status != 200 else ""
        except httpx.TransportError as exc:
            status, code = 0, type(exc).__name__
        seconds = time.perf_counter() - t0
        self.acknowledged += status == 200
        self.rec.add("writes", time.monotonic(), status, seconds, code)
        return status, seconds, code


def writer_loop(writer: Writer, rec: Recorder, until: threading.Event, every: float = 1.0) -> None:
    nxt = time.monotonic()
    while not until.is_set() and not rec.stop.is_set():
        writer.write()
        nxt = max(nxt + every, time.monotonic())  # one a second; after a slow answer, the next at once
        until.wait(max(0.0, nxt - time.monotonic()))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.machine()}, {platform.system()} {platform.release()}"


# -- the run ----------------------------------------------------------------------------------
def run(args, folder: Path, started: list) -> dict:
    import psycopg

    pg = Postgres(folder / "pg")
    started.append(pg)
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute('CREATE DATABASE "imprint_hang"')
    url = pg.url("imprint_hang")
    model = make_model(folder, args.seed)

    a = Replica("A", model, url, folder / "replica_a.log")
    started.append(a)
    b = Replica("B", model, url, folder / "replica_b.log")
    started.append(b)
    a.wait_ready()
    b.wait_ready()

    rec = Recorder()
    ca, cb = httpx.Client(base_url=a.url, timeout=30), httpx.Client(base_url=b.url, timeout=30)
    started.extend([ca, cb])
    r = ca.post("/classes/kept/examples", files=files("first.png", png(1)))
    if r.status_code != 201:
        raise RuntimeError(f"teaching the first class: {r.status_code} {r.text}")
    deadline = time.monotonic() + 30
    while replica_classes(cb) != {"kept": 1}:
        if time.monotonic() > deadline:
            raise RuntimeError("replica B did not learn the class within 30 s")
        time.sleep(0.05)
    for _ in range(20):  # warm the prediction path of both replicas
        ca.post("/predict", files=files("warm.png", png(3)))
        cb.post("/predict", files=files("warm.png", png(3)))

    threads = [threading.Thread(target=predictor, args=(a.url, rec, args.rate), daemon=True),
               threading.Thread(target=health_poller, args=([a, b], rec), daemon=True)]
    writer = Writer(a.url, rec)
    started.append(writer.client)
    try:
        rec.phase = "before"
        t_before = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.before_seconds)

        rec.phase = "hang"
        t_stop = time.monotonic()
        stopped = pg.freeze()
        hang_over = threading.Event()
        w = threading.Thread(target=writer_loop, args=(writer, rec, hang_over), daemon=True)
        w.start()
        time.sleep(args.hang_seconds)
        hang_over.set()
        w.join(70)  # a write in flight answers within its client timeout (60 s)

        rec.phase = "recovery"
        pg.thaw()
        t_cont = time.monotonic()
        first_200 = None
        give_up = t_cont + args.recovery_timeout
        while time.monotonic() < give_up:
            status, _, _ = writer.write()
            if status == 200:
                first_200 = time.monotonic() - t_cont
                break
            time.sleep(0.2)
        agreed, db = None, None
        while first_200 is not None and time.monotonic() < give_up:
            ka, kb = replica_classes(ca), replica_classes(cb)
            try:
                db = db_classes(url)
            except psycopg.Error:
                db = None
            ready = all(c.get("/ready").status_code == 200 for c in (ca, cb))
            if ka is not None and ka == kb == db and ready:
                agreed = time.monotonic() - t_cont
                break
            time.sleep(0.1)
        time.sleep(1.0)  # a little of "after" for the health poller and the predictor
    finally:
        rec.stop.set()
        pg.thaw()
        for t in threads:
            t.join(40)
    return {"rec": rec, "t_before": t_before, "t_stop": t_stop, "t_cont": t_cont, "stopped": stopped,
            "first_200": first_200, "agreed": agreed, "db": db, "writer": writer, "pg_version": pg.version,
            "cmds": [a.cmd, b.cmd]}


def runs(values) -> str:
    """A sequence as runs, in order: ``ok x4, degraded x36``."""
    out: list[list] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return ", ".join(f"{v} x{n}" for v, n in out) or "-"


def report(args, out: dict, started_at: datetime.datetime, load_before, load_after) -> None:
    rec: Recorder = out["rec"]
    t_stop = out["t_stop"]

    def latencies(phase):
        rows = [x for x in rec.predictions if x[0] == phase]
        return rows, [s for _, _, st, s in rows if st == 200]

    rb, ob = latencies("before")
    rh, oh = latencies("hang")
    def ms(v):
        return f"{1000 * v:.1f}" if v is not None else "-"

    print(f"\n## A hung database: {args.hang_seconds:g} s of SIGSTOP on every PostgreSQL process "
          f"({len(out['stopped'])} processes)\n")
    print(f"| | before the hang ({args.before_seconds:g} s) | during the hang ({args.hang_seconds:g} s) |")
    print("| --- | --- | --- |")
    print(f"| `/predict` on replica A: answered 200 / sent | {len(ob)} / {len(rb)} | {len(oh)} / {len(rh)} |")
    for q in (50, 95):
        print(f"| `/predict` p{q} ms | {ms(pct(ob, q) if ob else None)} | {ms(pct(oh, q) if oh else None)} |")
    print(f"| `/predict` max ms | {ms(max(ob) if ob else None)} | {ms(max(oh) if oh else None)} |")

    writes = [x for x in rec.writes if x[0] == "hang"]
    answers = runs(f"{st} `{code}`" if code else str(st) for _, _, st, _, code in writes)
    secs = [s for _, _, _, s, _ in writes]
    print(f"| writes to replica A (one a second), in order | - | {answers} |")
    if secs:
        print(f"| writes: seconds to answer, first / median / max | - | "
              f"{secs[0]:.2f} / {pct(secs, 50):.3f} / {max(secs):.2f} |")
    for label in ("A", "B"):
        cells = []
        for phase in ("before", "hang"):
            ph = [x for x in rec.health if x[2] == label and x[0] == phase]
            cell = f"{runs(x[4] for x in ph)}; `/ready` {runs(x[5] for x in ph)}"
            degraded = [x[1] - t_stop for x in ph if x[4] == "degraded"]
            if phase == "hang" and degraded:
                cell += f" (first degraded {degraded[0]:.1f} s after SIGSTOP)"
            cells.append(cell)
        what = "the same" if label == "B" else "`/health` store state, `/ready`, in order (polls every 0.5 s)"
        print(f"| replica {label}{' (no writes)' if label == 'B' else ''}: {what} | {cells[0]} | {cells[1]} |")
    cells = []
    for phase in ("before", "hang"):
        ph = [x for x in rec.health if x[0] == phase]
        statuses = "/".join(str(s) for s in sorted({x[3] for x in ph})) or "-"
        cells.append(f"{statuses}, {1000 * max(x[6] for x in ph):.0f} ms" if ph else "-")
    print(f"| `/health` status, max ms (both replicas) | {cells[0]} | {cells[1]} |")

    f200, ag = out["first_200"], out["agreed"]
    print("\n| recovery, from `SIGCONT` | seconds |")
    print("| --- | --- |")
    print(f"| first write answered 200 (a write tried every 0.2 s) | {'not within the timeout' if f200 is None else f'{f200:.2f}'} |")
    print(f"| both replicas' `/classes` equal to each other and to the database, both `/ready` 200 | "
          f"{'not within the timeout' if ag is None else f'{ag:.2f}'} |")

    w: Writer = out["writer"]
    held = (out["db"] or {}).get("kept")
    if held is not None:
        print(f"\nClass `kept` in the database after recovery: {held} examples = 1 taught before + "
              f"{w.acknowledged} write(s) answered 200 + {held - 1 - w.acknowledged} written by requests "
              f"answered 503 (a write in flight at its deadline commits whole when the database "
              f"is back); {w.n} writes tried in all.")

    print(f"\nMachine: {machine()}; load average {load_before} at start, {load_after} at the end.")
    print(f"{out['pg_version']}; Python {platform.python_version()}; seed {args.seed} "
          f"(torch.manual_seed for the random conv4 model; images from numpy default_rng).")
    print(f"Date: {started_at.strftime('%Y-%m-%d %H:%M UTC')}.")
    print(f"Command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"Replicas: IMPRINTING_ENGINE=torch OMP_NUM_THREADS=1 {' '.join(out['cmds'][0][1:])} (B alike, its own port)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hang-seconds", type=float, default=20.0)
    p.add_argument("--before-seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=10.0, help="predictions a second (one client)")
    p.add_argument("--recovery-timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-logs", action="store_true", help="print the replicas' logs at the end")
    args = p.parse_args()
    if not (0 < args.hang_seconds <= 600 and 0 < args.before_seconds <= 600 and 0 < args.rate <= 100):
        p.error("--hang-seconds and --before-seconds in (0, 600], --rate in (0, 100]")

    def on_term(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    started_at = datetime.datetime.now(datetime.UTC)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    folder = Path(tempfile.mkdtemp(prefix="imprint-hang-"))
    os.chmod(folder, 0o755)  # the postgres user reaches its folder inside
    (folder / "pg").mkdir()
    started: list = []
    try:
        out = run(args, folder, started)
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
        report(args, out, started_at, load_before, load_after)
        if args.keep_logs:
            for r in started:
                if isinstance(r, Replica):
                    print(f"\n--- replica {r.label} log ---\n{r.log()}")
    finally:
        for thing in reversed(started):  # clients, replicas, then PostgreSQL (thawed first)
            try:
                if isinstance(thing, httpx.Client):
                    thing.close()
                else:
                    thing.stop()
            except Exception as exc:  # noqa: BLE001  (stop the rest whatever happened)
                print(f"stopping {type(thing).__name__}: {exc}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
