"""A server on loopback and clients for it that cost the shared cores little: the parts of
``serve_load.py`` and ``serve_ab.py``.

``start_server`` runs ``imprint serve`` in a subprocess on a free port and waits for its
``/health``; ``run_clients`` sends prebuilt requests from threads, each on a keep-alive raw
socket (``Connection``: about 0.1 ms of CPU a request, where an ``httpx`` client takes about
1.7 ms on the 2-core EPYC, as much as the service's whole HTTP handling); ``Sampler`` and
``HealthPoller`` watch the server's resident memory and ``/health`` latency during a block;
``cpu_seconds`` and ``proc_status`` read its CPU and memory from ``/proc``.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler:
    """The server's peak resident memory (MiB) during a block, sampled every 20 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self):
        self.peak = proc_status(self.pid, "VmRSS")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))
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
    """``GET /health`` every 100 ms during a block, from a process of its own; ms."""

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


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def start_server(model: Path, store: Path, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "imprinting.cli", "serve", str(model), "--store", str(store), "--port", str(port),
           "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
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


def body(items: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    """A ready multipart body for /predict and its content-type header."""
    request = httpx.Request("POST", "http://x/predict", files=[("files", (n, d, "image/jpeg")) for n, d in items])
    return request.read(), {"content-type": request.headers["content-type"]}


def raw_request(url: str, content: bytes, headers: dict, path: str = "/predict") -> bytes:
    """The whole HTTP/1.1 request, as bytes, ready to send again and again."""
    host = url.split("//", 1)[1]
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {headers['content-type']}\r\n" \
           f"Content-Length: {len(content)}\r\n\r\n"
    return head.encode() + content


class Connection:
    """A keep-alive HTTP/1.1 connection that sends prebuilt requests and reads the status and
    the body of each answer: a load generator that costs the shared cores little CPU (an
    ``httpx`` client costs about 1.7 ms a request on the 2-core EPYC, as much as the service's
    whole HTTP handling)."""

    def __init__(self, url: str):
        self.address = url.split("//", 1)[1].rsplit(":", 1)
        self.sock = None

    def post(self, request: bytes) -> int:
        if self.sock is None:
            self.sock = socket.create_connection((self.address[0], int(self.address[1])), timeout=600)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, rest = data.partition(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
        fields = {k.strip().lower(): v.strip().lower() for k, v in fields.items()}
        length = int(fields.get(b"content-length", 0))
        while len(rest) < length:
            rest += self._recv()
        if fields.get(b"connection") == b"close":
            self.close()
        return int(head[9:12])

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed by the server")
        return chunk

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def run_clients(url: str, clients: int, bodies: list, requests: int, path: str = "/predict"):
    """``clients`` threads, each sending ``requests`` of the ``bodies`` (in turn) back to back
    on its own connection, without retrying; [(status, seconds)] and the wall time."""
    results, lock = [], threading.Lock()
    ready = threading.Barrier(clients + 1)
    raw = [raw_request(url, content, headers, path) for content, headers in bodies]

    def client(k: int):
        c = Connection(url)
        ready.wait()
        for i in range(requests):
            t = time.perf_counter()
            try:
                status = c.post(raw[(k * requests + i) % len(raw)])
            except OSError:
                status = 0
                c.close()
            with lock:
                results.append((status, time.perf_counter() - t))
        c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start
