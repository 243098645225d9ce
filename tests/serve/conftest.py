"""Fixtures for the service tests: small model files, a server subprocess on a free loopback
port, and image bytes (good, damaged, and hostile) made in the test.

Helpers reach the tests through the ``kit`` fixture (``kit.image_bytes(...)``): a test module
cannot import this conftest by name, since tests/conftest.py is also called ``conftest``.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import types
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import imprinting

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TOKEN = "s3cret-token"


# -- images --------------------------------------------------------------------
def image_bytes(color=(200, 30, 30), size=(48, 40), seed=0, fmt="PNG", noise=25) -> bytes:
    """A small image of one colour plus noise, encoded in memory."""
    rng = np.random.default_rng(seed)
    base = np.array(color)[None, None, :] + rng.integers(-noise, noise + 1, (size[1], size[0], 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, fmt)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit PNG of width x height black pixels: ~50 KB that decodes to 400 M pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def files(*items: tuple[str, bytes]) -> list:
    """httpx multipart ``files=`` for the field 'files'."""
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def expected_template(embeddings: torch.Tensor) -> torch.Tensor:
    """The imprinted weight, computed here without the library: normalize(sum(e_i / |e_i|))."""
    e = embeddings.double()
    s = (e / e.norm(dim=1, keepdim=True)).sum(dim=0)
    return s / s.norm()


def read_store(path: Path) -> dict:
    """Everything in a store file, read with plain sqlite3 (independent of the Store class)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        problems = [r[0] for r in db.execute("PRAGMA integrity_check") if r[0] != "ok"]
        classes = {}
        for cid, name, count, blob in db.execute("SELECT id, name, count, sum FROM classes"):
            rows = db.execute("SELECT id, embedding FROM examples WHERE class_id = ? ORDER BY id", (cid,)).fetchall()
            classes[name] = {
                "count": count,
                "sum": np.frombuffer(blob, dtype="<f8"),
                "ids": [r[0] for r in rows],
                "embeddings": np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]) if rows else None,
            }
        orphans = db.execute("SELECT COUNT(*) FROM examples WHERE class_id NOT IN (SELECT id FROM classes)").fetchone()[0]
        return {"problems": problems + [f"{orphans} examples without a class"] * bool(orphans), "classes": classes}
    finally:
        db.close()


# -- servers -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m imprinting.cli serve MODEL --store STORE`` on a free loopback port."""

    def __init__(self, model: Path, store: Path, log: Path, *args: str):
        self.model, self.store, self.log_path = model, store, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "imprinting.cli", "serve", str(model), "--store", str(store),
               "--port", str(self.port), "--log-level", "warning", *args]
        env = {k: v for k, v in os.environ.items() if k != "IMPRINT_TOKEN"}
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within 90 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, token: str | None = None, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture
def start_server(tmp_path):
    """Start servers in a test; all are stopped at its end."""
    started: list[Server] = []

    def start(model: Path, store: Path, *args: str) -> Server:
        server = Server(model, store, tmp_path / f"server{len(started)}.log", *args)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


# -- models --------------------------------------------------------------------
@pytest.fixture(scope="session")
def conv4_model(tmp_path_factory) -> Path:
    """A tiny random conv4 model: two base classes and one class imprinted in the file."""
    torch.manual_seed(0)
    model = imprinting.create_model("conv4", pretrained=False, class_names=["base_a", "base_b"])
    model.imprint("file_class", [decode(image_bytes((10, 10, 10), seed=99))])
    path = tmp_path_factory.mktemp("models") / "conv4.safetensors"
    imprinting.save(model, path)
    return path


@pytest.fixture(scope="session")
def conv4(conv4_model):
    """The same model, loaded in the test process to compute expectations."""
    return imprinting.load(conv4_model)


@pytest.fixture(scope="session")
def shared_server(conv4_model, tmp_path_factory):
    """One server for the tests that only add their own classes: token required for writes,
    a 2 MiB request limit, 4 images per request, an unknown threshold of 0.5."""
    folder = tmp_path_factory.mktemp("shared_server")
    server = Server(conv4_model, folder / "store.sqlite", folder / "server.log", "--token", TOKEN,
                    "--max-request-mb", "2", "--max-images", "4", "--unknown-threshold", "0.5")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def flowers_data() -> Path:
    if not (DATA / "flowers102" / "flowers-102" / "setid.mat").is_file():
        pytest.skip(f"real data not found: Flowers-102 is expected in {DATA / 'flowers102'} (../shared/data)")
    return DATA


@pytest.fixture(scope="session")
def kit():
    """The helpers above, for test modules."""
    return types.SimpleNamespace(
        TOKEN=TOKEN, image_bytes=image_bytes, decode=decode, png_bomb=png_bomb, files=files,
        expected_template=expected_template, read_store=read_store, Server=Server,
    )
