"""Benchmark of ``imprint serve`` replicas over one PostgreSQL class store; prints tables.

1. Predict throughput and latency (p50, p95) with 1, 2 and 3 replicas, one image per request,
   ``--clients`` concurrent clients spread round-robin over the replicas (what any HTTP load
   balancer does), ``--seconds`` per configuration after a 2 s warm-up, the three configurations
   measured in turn ``--rounds`` times (so that a change in the machine's load hits all three),
   and the CPU time the replicas spent per image (from /proc: what the load of other jobs does
   not change, and what N replicas on N machines would each spend). Each replica runs torch
   with ``--threads`` threads (default 1): on this 2-core machine 1 replica uses one core,
   2 replicas both, 3 replicas share them; the cores are shared with whatever else runs.
2. The time for a write to reach every replica: a class is taught on one replica (round-robin),
   and from the moment the answer arrives the other replicas are polled (GET /classes/{name},
   one client each, back to back) until their count includes it.
3. The start time of a replica whose store has ``--classes`` classes (default 100,000), in
   PostgreSQL and in SQLite, filled here with the same random ``--dim``-d sums (one example
   each): the store's own open (schema, fingerprint and integrity checks) and read of every
   class in this process, then ``imprint serve`` from process start to the first /health answer
   (restoring every class into the model included).
Also: commits per second of the PostgreSQL store's write path (``add_to_class``), from 1 and from
4 writers at once.

The model is EfficientNet-Lite0 with random weights (nothing is downloaded) and an FC layer to
``--dim`` (64) dimensions; the images are generated. PostgreSQL: ``--url`` (a server on which it may create databases),
else a throwaway server started like the tests' (tests/serve/pg_server.py); the benchmark makes
a database per part.

Usage::

    .venv/bin/python benchmarks/replicas.py [--url postgresql://...] [--seconds 8] [--rounds 2] [--clients 8]
        [--classes 100000] [--dim 64] [--threads 1] [--part all|replicas|writes|start] [--start-repeats 1]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

import imprinting
from imprinting.serve.service import Service
from imprinting.serve.stores import open_store

REPO = Path(__file__).resolve().parents[1]


class Replica:
    """``imprint serve MODEL --store STORE`` on a free loopback port; ``start_seconds`` to /health."""

    def __init__(self, model: Path, store: str, log: Path, threads: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log, "ab")
        self.log_path = log
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), IMPRINTING_ENGINE="torch")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imprinting.cli", "serve", str(model), "--store", store, "--port", str(port),
             "--log-level", "warning"], stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env)

    def wait(self) -> Replica:
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica exited: {self.log_path.read_text()}")
            if time.perf_counter() - self.t0 > 300:
                self.proc.kill()
                raise RuntimeError(f"replica did not answer in 300 s: {self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    self.start_seconds = time.perf_counter() - self.t0
                    return self
            except httpx.TransportError:
                time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self._log.close()


def png(seed: int, size: int = 224) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def files(*items):
    return [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(items)]


def pct(values, q):
    return float(np.percentile(np.asarray(values) * 1000, q))


# -- 1. throughput -------------------------------------------------------------------------
def cpu_seconds(replicas: list[Replica]) -> float:
    """User + system CPU time the replica processes have used so far."""
    ticks = 0
    for r in replicas:
        fields = Path(f"/proc/{r.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def throughput(replicas: list[Replica], clients: int, seconds: float) -> dict:
    images = [png(1000 + i) for i in range(16)]
    latencies: list[float] = []
    total = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + 2 + seconds
    count_from = time.perf_counter() + 2  # the first 2 s warm up

    def client(c: int):
        with httpx.Client(timeout=120) as h:
            i = c
            while (now := time.perf_counter()) < stop:
                r = h.post(replicas[i % len(replicas)].url + "/predict", files=files(images[i % 16]))
                assert r.status_code == 200, r.text
                with lock:
                    total[0] += 1
                    if now >= count_from:
                        latencies.append(time.perf_counter() - now)
                i += 1

    cpu = cpu_seconds(replicas)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    cpu = cpu_seconds(replicas) - cpu
    return {"replicas": len(replicas), "requests": len(latencies), "images/s": len(latencies) / seconds,
            "p50 ms": pct(latencies, 50), "p95 ms": pct(latencies, 95), "cpu ms": 1000 * cpu / total[0]}


# -- 2. propagation ------------------------------------------------------------------------
def propagation(replicas: list[Replica], writes: int) -> list[float]:
    times = []
    watchers = {r.url: httpx.Client(timeout=60) for r in replicas}  # made beforehand: a client takes ~50 ms to make
    with httpx.Client(timeout=60) as h:
        for r in replicas:  # connections open
            watchers[r.url].get(f"{r.url}/health")
        for w in range(writes):
            writer = replicas[w % len(replicas)]
            name = f"spread {w}"
            r = h.post(f"{writer.url}/classes/{name}/examples", files=files(png(w)))
            assert r.status_code == 201, r.text
            acked = time.perf_counter()
            reached = []

            def watch(replica):
                while watchers[replica.url].get(f"{replica.url}/classes/{name}").status_code != 200:
                    time.sleep(0.001)
                reached.append(time.perf_counter() - acked)

            with ThreadPoolExecutor(len(replicas) - 1) as pool:
                list(pool.map(watch, [x for x in replicas if x is not writer]))
            times.append(max(reached))
    for c in watchers.values():
        c.close()
    return times


def store_writes(url: str, dim: int, writes: int = 200) -> dict:
    """Commits per second of ``add_to_class`` (1 example, fsync on), from 1 writer, and from 4
    writers (4 stores, as on 4 replicas) on one class and on 4 classes."""
    stores = [open_store(url, dim, "bench-writes", "benchmark") for _ in range(4)]
    e = np.random.default_rng(0).normal(size=(1, dim)).astype(np.float32)
    out = {}
    try:
        for label, writers, same in (("1 writer", 1, True), ("4 writers, one class", 4, True),
                                     ("4 writers, 4 classes", 4, False)):
            def write(w):
                for _ in range(writes // writers):
                    stores[w].add_to_class("one" if same else f"class {w}", e, ["x"], ["x"])

            t = time.perf_counter()
            with ThreadPoolExecutor(writers) as pool:
                list(pool.map(write, range(writers)))
            out[label] = writes / (time.perf_counter() - t)
    finally:
        for s in stores:
            s.close()
    return out


# -- 3. start time with many classes -----------------------------------------------------------
def fill_stores(model, url: str, sqlite_path: Path, n: int, seed: int = 0):
    """The same n classes of one example each in both stores, written in bulk (one transaction)."""
    dim, fp = model.embedder.dim, Service._fingerprint(model)
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, dim)).astype(np.float32)
    sums = e.astype(np.float64) / np.linalg.norm(e.astype(np.float64), axis=1, keepdims=True)
    now = time.time()
    open_store(sqlite_path, dim, fp, "benchmark").close()
    db = sqlite3.connect(sqlite_path)
    with db:
        db.executemany("INSERT INTO classes (id, name, count, sum, created, updated) VALUES (?, ?, 1, ?, ?, ?)",
                       ((i + 1, f"c{i}", sums[i].tobytes(), now, now) for i in range(n)))
        db.executemany("INSERT INTO examples (class_id, embedding, sha256, filename, created) VALUES (?, ?, 'x', 'x', ?)",
                       ((i + 1, e[i].tobytes(), now) for i in range(n)))
    db.close()
    open_store(url, dim, fp, "benchmark").close()
    import psycopg

    with psycopg.connect(url) as conn:
        with conn.cursor().copy("COPY imprint_classes (name, count, sum, version, created, updated) FROM STDIN") as cp:
            for i in range(n):
                cp.write_row((f"c{i}", 1, sums[i].tobytes(), i + 1, now, now))
        ids = dict(conn.execute("SELECT name, id FROM imprint_classes").fetchall())
        with conn.cursor().copy("COPY imprint_examples (class_id, embedding, sha256, filename, created) FROM STDIN") as cp:
            for i in range(n):
                cp.write_row((ids[f"c{i}"], e[i].tobytes(), "x", "x", now))
        conn.execute("UPDATE imprint_clock SET seq = %s", (n,))
        conn.execute("ANALYZE")


def store_read_seconds(model, target) -> tuple[float, float, int]:
    """(open with its checks, read every class) in seconds, and the number of classes."""
    t0 = time.perf_counter()
    store = open_store(target, model.embedder.dim, Service._fingerprint(model), "benchmark")
    t1 = time.perf_counter()
    n = len(store.classes())
    t2 = time.perf_counter()
    store.close()
    return t1 - t0, t2 - t1, n


def part_replicas(args, model_path: Path, url: str, folder: Path, started: list) -> None:
    replicas = [Replica(model_path, url, folder / f"r{i}.log", args.threads) for i in range(3)]
    started += replicas
    for r in replicas:
        r.wait()
    with httpx.Client(timeout=60) as h:
        for i in range(10):
            assert h.post(f"{replicas[0].url}/classes/taught {i}/examples", files=files(png(i))).status_code == 201
    print("replicas started (empty store, 3 at once) in " + ", ".join(f"{r.start_seconds:.1f}" for r in replicas)
          + " s")
    print(f"\n## Predict, 1 image per request, {args.clients} clients round-robin, {args.seconds:.0f} s, "
          f"{args.threads} torch thread(s) per replica; rounds 1, 2, 3 replicas x {args.rounds}, interleaved")
    print("| replicas | round | requests | images/s | p50 ms | p95 ms | replica CPU ms per image |\n"
          "|---|---|---|---|---|---|---|")
    for k in range(args.rounds):
        for n in (1, 2, 3):
            row = throughput(replicas[:n], args.clients, args.seconds)
            print(f"| {n} | {k + 1} | {row['requests']} | {row['images/s']:.1f} | {row['p50 ms']:.0f} | "
                  f"{row['p95 ms']:.0f} | {row['cpu ms']:.1f} |", flush=True)
    times = propagation(replicas, args.writes)
    print(f"\n## A write reaching the 2 other replicas ({args.writes} writes, from the acknowledgement)")
    print(f"median {pct(times, 50):.1f} ms, p95 {pct(times, 95):.1f} ms, max {max(times) * 1000:.1f} ms")
    for r in replicas:
        r.stop()


def part_start(args, model, model_path: Path, url: str, folder: Path, started: list) -> None:
    sqlite_path = folder / "many.sqlite"
    t = time.perf_counter()
    fill_stores(model, url, sqlite_path, args.classes)
    print(f"\n## A replica's start with {args.classes:,} classes ({args.dim}-d; stores filled in "
          f"{time.perf_counter() - t:.0f} s), {args.start_repeats} time(s) each, alternating")
    print("| store | open + checks s | read every class s | `Service` (read + restore into the model) s "
          "| `imprint serve` to first /health s |\n|---|---|---|---|---|")
    for _ in range(args.start_repeats):
        for label, target in (("PostgreSQL", url), ("SQLite", str(sqlite_path))):
            opened, read, n = store_read_seconds(model, target)
            assert n == args.classes
            fresh = imprinting.load(model_path)
            t = time.perf_counter()
            Service(fresh, open_store(target, fresh.embedder.dim, Service._fingerprint(fresh), "benchmark")).close()
            restore = time.perf_counter() - t
            del fresh
            r = Replica(model_path, target, folder / f"start-{label}.log", args.threads)
            started.append(r)
            r.wait()
            with httpx.Client(timeout=60) as h:
                assert h.get(r.url + "/health").json()["classes"] == args.classes
            r.stop()
            print(f"| {label} | {opened:.2f} | {read:.2f} | {restore:.1f} | {r.start_seconds:.1f} |", flush=True)


def databases_on(url: str):
    """A function that creates a new database on the server of ``url`` and returns its URL."""
    import psycopg
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    count = iter(range(1000))

    def new_database() -> str:
        name = f"imprint_bench_{os.getpid()}_{next(count)}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))

    return new_database


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a PostgreSQL server where the benchmark may create databases, e.g. "
                    "postgresql://postgres@host/postgres (default: a throwaway server)")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=2, help="times the 1, 2, 3 replicas cycle is measured")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--writes", type=int, default=30)
    ap.add_argument("--classes", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--part", choices=["all", "replicas", "writes", "start"], default="all")
    ap.add_argument("--start-repeats", type=int, default=1)
    args = ap.parse_args()

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    folder = Path(tempfile.mkdtemp(prefix="bench_replicas_"))
    server = None
    if args.url:
        new_database = databases_on(args.url)
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from serve.pg_server import PostgresServer

        server = PostgresServer()
        new_database = server.new_database
    torch.manual_seed(0)
    model = imprinting.create_model("efficientnet_lite0", pretrained=False, dim=args.dim)
    model_path = folder / "model.safetensors"
    imprinting.save(model, model_path)
    started: list[Replica] = []
    try:
        if args.part in ("all", "replicas"):
            part_replicas(args, model_path, new_database(), folder, started)
        if args.part in ("all", "writes"):
            rates = store_writes(new_database(), args.dim)
            print("\n## Store commits (add_to_class, 1 example each, fsync on), in this process")
            print(", ".join(f"{k}: {v:.0f}/s" for k, v in rates.items()))
        if args.part in ("all", "start"):
            part_start(args, model, model_path, new_database(), folder, started)
        print(f"\n# load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        for r in started:
            try:
                r.stop()
            except Exception:  # noqa: BLE001
                r.proc.kill()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
