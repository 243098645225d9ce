"""The clients of ``benchmarks/hung_database.py``: generated images, the prediction client, the
``/health`` poller, the writer, and the recorder of their timestamped samples (by phase).
"""

from __future__ import annotations

import io
import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np

if TYPE_CHECKING:
    from pg_cluster import Replica


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

