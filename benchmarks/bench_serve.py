"""Benchmark of ``imprint serve``, over real HTTP on a loopback port; prints tables.

1. Enrol overhead: the time for ``POST /classes/{name}/examples`` with n images (client wall
   time: upload, multipart parsing, decode, embed, imprint, SQLite commit with fsync,
   answer) divided by the plain forward of the same images, measured three ways:
   (a) the server's own decode + ``embed_images`` time for that request (``embed_seconds``
   in the answer: same process, same moment, so machine load cancels out), (b)
   ``model.embed_images`` of the same files in this process (decode + preprocess +
   network), (c) the network forward alone on the already-preprocessed batch. Goal: at
   most 1.1. Medians over ``--repeats`` runs, enrols and in-process forwards interleaved;
   the in-process timings run in a worker thread, like the server's requests.
2. Predict throughput (images/s) and median latency with 1, 4 and 16 concurrent clients,
   one image per request.
3. Enrol time as the store grows to ``--classes`` classes (default 10,000): classes are
   added one request at a time (1 image each) and the enrol times are summarised per
   tenth of the run; then the server is restarted on the full store (restart time) and
   enrol is timed again. This part uses the small conv4 backbone, so that 10,000 HTTP
   enrols take minutes; the backbone's forward is a constant that (1) measures.

Real Flowers-102 images from ``--data-root`` (default ../shared/data) when present, otherwise
generated 500x375 JPEGs.

Usage::

    .venv/bin/python benchmarks/bench_serve.py [--data-root ../shared/data] [--image-size 224]
        [--repeats 7] [--classes 10000]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import socket
import statistics
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
from imprinting.data.transforms import eval_transform

REPO = Path(__file__).resolve().parents[1]


# -- servers -------------------------------------------------------------------
class Server:
    def __init__(self, model: Path, store: Path, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log, "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imprinting.cli", "serve", str(model), "--store", str(store), "--port", str(port),
             "--log-level", "warning"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()}")
            if time.perf_counter() - t0 > 180:
                self.proc.kill()
                raise RuntimeError(f"server did not answer in 180 s: {log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        self.start_seconds = time.perf_counter() - t0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self._log.close()


def multipart(items: list[tuple[str, bytes]]) -> list:
    return [("files", (name, data, "image/jpeg")) for name, data in items]


# -- images --------------------------------------------------------------------
def benchmark_images(data_root: Path, n: int) -> tuple[list[Path], str]:
    folder = data_root / "flowers102" / "flowers-102" / "jpg"
    if folder.is_dir():
        files = sorted(folder.glob("*.jpg"))[:n]
        if len(files) == n:
            return files, f"Flowers-102 JPEGs from {folder}"
    out = Path(tempfile.mkdtemp(prefix="bench_serve_img_"))
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        arr = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        files.append(out / f"{i}.jpg")
        Image.fromarray(arr).save(files[-1], quality=85)
    return files, "generated 500x375 JPEGs (Flowers-102 not found)"


# -- 1. enrol overhead -------------------------------------------------------------
@torch.no_grad()
def forward_only(model, batch: torch.Tensor) -> torch.Tensor:
    return model.embed(batch)


def enrol_overhead(server: Server, model, files: list[Path], ns: list[int], repeats: int) -> list[dict]:
    # All torch work here runs in one worker thread, as the server runs its requests: on a busy
    # machine, torch's OpenMP threads spin-wait in the main thread (7x the CPU time measured
    # with other jobs running; OMP_WAIT_POLICY=PASSIVE removes it) but not in other threads.
    worker = ThreadPoolExecutor(1)
    data = {p: p.read_bytes() for p in files}
    transform = eval_transform(model.preprocess)
    rows = []
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for n in ns:
            chosen = files[:n]
            batch = worker.submit(lambda: torch.stack([transform(img) for img in model.load_images(chosen)])).result()
            enrol, server_embed, embed, forward = [], [], [], []
            for r in range(repeats + 1):  # the first round warms up and is not counted
                t0 = time.perf_counter()
                resp = c.post(f"/classes/enrol n{n} r{r}/examples", files=multipart([(p.name, data[p]) for p in chosen]))
                t1 = time.perf_counter()
                assert resp.status_code == 201, resp.text
                worker.submit(model.embed_images, chosen).result()
                t2 = time.perf_counter()
                worker.submit(forward_only, model, batch).result()
                t3 = time.perf_counter()
                if r:
                    enrol.append(t1 - t0)
                    server_embed.append(resp.json()["embed_seconds"])
                    embed.append(t2 - t1)
                    forward.append(t3 - t2)
            med = {k: statistics.median(v) for k, v in
                   {"enrol": enrol, "server_embed": server_embed, "embed": embed, "forward": forward}.items()}
            rows.append({"n": n, **{k: 1000 * v for k, v in med.items()},
                         "ratio_server": statistics.median(e / s for e, s in zip(enrol, server_embed)),
                         "ratio_embed": med["enrol"] / med["embed"], "ratio_forward": med["enrol"] / med["forward"]})
    return rows


# -- 2. predict throughput -----------------------------------------------------------
def predict_throughput(server: Server, files: list[Path], clients_list: list[int], per_client: int) -> list[dict]:
    data = [(p.name, p.read_bytes()) for p in files]
    rows = []
    for clients in clients_list:
        latencies: list[float] = []
        lock = threading.Lock()
        count = max(per_client, 48 // clients)

        def run(w: int):
            with httpx.Client(base_url=server.url, timeout=300) as c:
                for i in range(count):
                    item = data[(w * count + i) % len(data)]
                    t0 = time.perf_counter()
                    r = c.post("/predict", params={"k": 5}, files=multipart([item]))
                    dt = time.perf_counter() - t0
                    assert r.status_code == 200, r.text
                    with lock:
                        latencies.append(dt)

        run(0)  # warm-up
        latencies.clear()
        threads = [threading.Thread(target=run, args=(w,)) for w in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        rows.append({"clients": clients, "requests": len(latencies), "images_per_s": len(latencies) / wall,
                     "p50_ms": 1000 * statistics.median(latencies),
                     "p90_ms": 1000 * float(np.percentile(latencies, 90))})
    return rows


# -- 3. enrol time as the store grows ----------------------------------------------------
def store_growth(folder: Path, classes: int) -> tuple[list[dict], dict]:
    torch.manual_seed(0)
    model_path = folder / "conv4.safetensors"
    imprinting.save(imprinting.create_model("conv4", pretrained=False), model_path)
    store = folder / "growth.sqlite"
    rng = np.random.default_rng(0)
    images = []
    for i in range(64):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        images.append(buf.getvalue())
    server = Server(model_path, store, folder / "growth.log")
    first_start = server.start_seconds
    times = []
    t_run = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for i in range(classes):
            t0 = time.perf_counter()
            r = c.post(f"/classes/grow {i:05d}/examples", files=[("files", ("a.png", images[i % 64], "image/png"))])
            times.append(time.perf_counter() - t0)
            assert r.status_code == 201, r.text
    run_seconds = time.perf_counter() - t_run
    server.stop()
    size = os.path.getsize(store) + sum(os.path.getsize(p) for p in folder.glob("growth.sqlite-*"))
    server = Server(model_path, store, folder / "growth.log")
    after = []
    with httpx.Client(base_url=server.url, timeout=60) as c:
        n_listed = len(c.get("/classes").json()["classes"])
        for i in range(50):
            t0 = time.perf_counter()
            r = c.post(f"/classes/after restart {i}/examples", files=[("files", ("a.png", images[i % 64], "image/png"))])
            after.append(time.perf_counter() - t0)
            assert r.status_code == 201, r.text
    server.stop()
    tenth = max(1, classes // 10)
    rows = []
    for start in range(0, classes, tenth):
        chunk = times[start : start + tenth]
        rows.append({"classes": f"{start}-{start + len(chunk)}", "median_ms": 1000 * statistics.median(chunk),
                     "p90_ms": 1000 * float(np.percentile(chunk, 90))})
    summary = {"classes": n_listed, "first_start_s": first_start, "restart_s": server.start_seconds, "after_restart_median_ms": 1000 * statistics.median(after),
               "store_mb": size / 2**20, "run_s": run_seconds}
    return rows, summary


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(format(r[key], fmt) for key, _, fmt in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--image-size", type=int, default=224, help="EfficientNet-Lite0 crop size")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--classes", type=int, default=10_000)
    ap.add_argument("--skip-growth", action="store_true")
    args = ap.parse_args()

    print(f"# imprint serve benchmark: {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f}\n")
    files, source = benchmark_images(args.data_root, 32)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        folder = Path(tmp)
        model_path = folder / "lite0.safetensors"
        model = imprinting.create_model("efficientnet_lite0", dim=None, image_size=args.image_size)
        imprinting.save(model, model_path)
        model = imprinting.load(model_path)
        server = Server(model_path, folder / "store.sqlite", folder / "server.log")
        try:
            print(f"EfficientNet-Lite0 (ImageNet), {args.image_size} px, {model.embedder.dim}-d; images: {source}; "
                  f"server start {server.start_seconds:.1f} s\n")
            rows = enrol_overhead(server, model, files, [1, 5, 10], args.repeats)
            print("## Enrol a class from n images, vs the plain forward of the same images (median ms)\n")
            print(table(rows, [("n", "n", "d"), ("enrol", "enrol over HTTP", ".1f"),
                               ("server_embed", "decode+embed in the server", ".1f"),
                               ("ratio_server", "enrol / server decode+embed", ".2f"),
                               ("embed", "embed_images here", ".1f"), ("ratio_embed", "enrol / embed_images here", ".2f"),
                               ("forward", "network forward here", ".1f"), ("ratio_forward", "enrol / forward here", ".2f")]))
            rows = predict_throughput(server, files, [1, 4, 16], per_client=6)
            print("\n## Predict, one image per request\n")
            print(table(rows, [("clients", "clients", "d"), ("requests", "requests", "d"),
                               ("images_per_s", "images/s", ".1f"), ("p50_ms", "p50 ms", ".0f"),
                               ("p90_ms", "p90 ms", ".0f")]))
        finally:
            server.stop()
        if not args.skip_growth:
            rows, summary = store_growth(folder, args.classes)
            print(f"\n## Enrol time as the store grows to {args.classes} classes (conv4, 1 image per class, one client)\n")
            print(table(rows, [("classes", "classes in store", "s"), ("median_ms", "median ms", ".1f"),
                               ("p90_ms", "p90 ms", ".1f")]))
            print(f"\nServer start to the first /health answer (process start and imports included): "
                  f"{summary['first_start_s']:.1f} s with an empty store, {summary['restart_s']:.1f} s with "
                  f"{summary['classes']} classes; enrol after restart: median {summary['after_restart_median_ms']:.1f} ms; "
                  f"store file {summary['store_mb']:.1f} MiB; growth run {summary['run_s']:.0f} s.")
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
