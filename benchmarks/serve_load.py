"""Load benchmark of ``imprint serve``: throughput, latency and peak memory under load.

A server subprocess (EfficientNet-Lite0, ImageNet weights, no FC layer, 224 px, default
limits: ``--memory-limit-mb 3072``) on a loopback port; clients are threads with their own
``httpx`` connection. Prints Markdown tables:

1. Ordinary load: 1, 8 and 32 clients, each sending ``POST /predict`` with ``--images``
   Flowers-102 JPEGs per request, back to back for ``--seconds``: requests answered 200 and
   503 (busy, with Retry-After), images/s of the 200s, p50/p95 latency of each status, the
   server's peak resident memory (sampled every 20 ms from /proc), and ``GET /health``
   latency (p50 / max) from a separate poller during the load.
2. Hostile load (the cases of issue 14): one ``/predict`` with 16 solid 8000x8000 PNGs
   (~200 KB each, under the 64 M-pixel limit), alone and with 40 concurrent 16-JPEG
   predicts; statuses, wall time, peak memory, /health latency.

Real Flowers-102 images from ``--data-root`` (default ../shared/data) when present, else
generated 500x375 JPEGs.

Usage::

    nice -n 10 .venv/bin/python benchmarks/serve_load.py [--data-root ../shared/data] [--seconds 20]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler:
    """The server's peak resident memory during a block, sampled every 20 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self):
        self.peak = rss_mb(self.pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


POLLER = """
import sys, time, httpx
url, out = sys.argv[1], open(sys.argv[2], "w", buffering=1)
with httpx.Client(timeout=30) as c:
    while True:
        t = time.perf_counter()
        try:
            ok = c.get(url + "/health").status_code == 200
        except httpx.HTTPError:
            ok = False
        out.write(f"{(time.perf_counter() - t) * 1000 if ok else float('inf')}\\n")
        time.sleep(0.1)
"""


class HealthPoller:
    """``GET /health`` every 100 ms during a block, from a process of its own (so that the
    clients' threads in this one do not delay it); latencies in ms (a failure is inf)."""

    def __init__(self, url: str):
        self.url, self.times = url, []

    def __enter__(self):
        self._file = tempfile.NamedTemporaryFile("r", suffix=".health", delete=False)
        self._proc = subprocess.Popen([sys.executable, "-c", POLLER, self.url, self._file.name])
        time.sleep(0.5)  # the poller's imports
        return self

    def __exit__(self, *exc):
        self._proc.terminate()
        self._proc.wait()
        self.times = [float(x) for x in Path(self._file.name).read_text().split()]
        os.unlink(self._file.name)

    def summary(self) -> str:
        if not self.times:
            return "-"
        return f"{statistics.median(self.times):.1f} / {pct(self.times, 95):.1f} / {max(self.times):.1f}"


def solid_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\0" + bytes((90, 160, 30)) * width
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpegs(data_root: Path, n: int) -> tuple[list[bytes], str]:
    folder = data_root / "flowers102" / "flowers-102" / "jpg"
    files = sorted(folder.glob("*.jpg"))[:n] if folder.is_dir() else []
    if len(files) == n:
        return [f.read_bytes() for f in files], f"Flowers-102 JPEGs ({folder})"
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out, "generated 500x375 JPEGs"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


def start_server(model: Path, store: Path, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "imprinting.cli", "serve", str(model), "--store", str(store), "--port", str(port),
           "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def multipart(items: list[tuple[str, bytes]]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def run_clients(url: str, clients: int, body, seconds: float | None = None, once: bool = False):
    """``clients`` threads posting ``body`` to /predict (back to back for ``seconds``, or
    once each; a 503 is retried after its Retry-After, as a polite client does); returns
    [(status, seconds)]."""
    results, lock = [], threading.Lock()
    deadline = time.monotonic() + (seconds or 0)

    def client():
        with httpx.Client(timeout=600) as c:
            while True:
                t = time.perf_counter()
                retry = 0.0
                try:
                    r = c.post(url + "/predict", files=multipart(body))
                    status = r.status_code
                    retry = float(r.headers.get("retry-after", 0)) if status == 503 else 0.0
                except httpx.HTTPError:
                    status = 0
                with lock:
                    results.append((status, time.perf_counter() - t))
                if once or time.monotonic() + retry >= deadline:
                    return
                time.sleep(retry)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--seconds", type=float, default=20.0, help="Duration of each ordinary-load row.")
    parser.add_argument("--images", type=int, default=4, help="JPEGs per ordinary request.")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8, 32], help="Ordinary-load rows (none: skip).")
    args = parser.parse_args()

    import torch

    import imprinting

    work = Path(tempfile.mkdtemp(prefix="serve_load-"))
    model_path = work / "lite0.safetensors"
    torch.manual_seed(0)
    model = imprinting.create_model("efficientnet_lite0", dim=None)
    images, source = jpegs(args.data_root, 32)
    model.add_class("flower a", model.embed_images([Image.open(io.BytesIO(b)) for b in images[:4]]))
    model.add_class("flower b", model.embed_images([Image.open(io.BytesIO(b)) for b in images[4:8]]))
    imprinting.save(model, model_path)
    del model

    proc, url = start_server(model_path, work / "store.sqlite", work / "server.log")
    try:
        idle = rss_mb(proc.pid)
        print(f"# imprint serve under load ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
        print(f"Command: `{' '.join(['python', *sys.argv])}`; {platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}, torch {torch.__version__}; {source}; server idle RSS "
              f"{idle:.0f} MiB; default limits (--memory-limit-mb 3072, 32 images in flight, --busy-wait 2); "
              f"load average at start {os.getloadavg()[0]:.1f}.\n")
        print(f"## Ordinary load: /predict with {args.images} JPEGs per request, {args.seconds:g} s per row\n")
        print("| clients | 200 | 503 | other | images/s (200s) | p50 ms (200) | p95 ms (200) | p50 ms (503) "
              "| peak RSS MiB | /health p50 / p95 / max ms |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        body = [(f"{i}.jpg", images[8 + i % 24]) for i in range(args.images)]
        for n in args.clients:
            with Sampler(proc.pid) as mem, HealthPoller(url) as health:
                start = time.perf_counter()
                results = run_clients(url, n, body, seconds=args.seconds)
                wall = time.perf_counter() - start
            ok = [t for s, t in results if s == 200]
            busy = [t for s, t in results if s == 503]
            other = len(results) - len(ok) - len(busy)
            print(f"| {n} | {len(ok)} | {len(busy)} | {other} | {len(ok) * args.images / wall:.1f} | "
                  f"{pct(ok, 50) * 1000:.0f} | {pct(ok, 95) * 1000:.0f} | {pct(busy, 50) * 1000:.0f} | "
                  f"{mem.peak:.0f} | {health.summary()} |", flush=True)

        print("\n## Hostile load (issue 14)\n")
        print("| case | statuses | wall s | peak RSS MiB | /health p50 / p95 / max ms |")
        print("| --- | --- | --- | --- | --- |")
        png = solid_png(8000, 8000)
        bomb = [(f"big{i}.png", png) for i in range(16)]
        sixteen = [(f"{i}.jpg", images[8 + i]) for i in range(16)]
        cases = [("16 x 8000x8000 PNG (%d KB each), alone" % (len(png) // 1024), [(bomb, 1)]),
                 ("40 concurrent predicts of 16 JPEGs", [(sixteen, 40)]),
                 ("both at once", [(bomb, 1), (sixteen, 40)])]
        for label, groups in cases:
            with Sampler(proc.pid) as mem, HealthPoller(url) as health:
                start = time.perf_counter()
                outs: list = []
                threads = [threading.Thread(target=lambda b=b, n=n: outs.extend(run_clients(url, n, b, once=True)))
                           for b, n in groups]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - start
            counts = {s: sum(1 for x, _ in outs if x == s) for s in sorted({x for x, _ in outs})}
            print(f"| {label} | {', '.join(f'{c} x {s}' for s, c in counts.items())} | {wall:.1f} | {mem.peak:.0f} | "
                  f"{health.summary()} |", flush=True)
        print(f"\nServer RSS after the run: {rss_mb(proc.pid):.0f} MiB.")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
