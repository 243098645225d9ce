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
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file

from hung_clients import (
    Recorder,
    Writer,
    db_classes,
    files,
    health_poller,
    make_model,
    pct,
    png,
    predictor,
    replica_classes,
    writer_loop,
)
from pg_cluster import Postgres, Replica


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
