"""Admission control: what the service lets in, across all requests.

A request is admitted while the time it would take to answer is under a bound, and the
process's memory is under its ceiling:

* time: every admitted image waits for the one inference worker (``serve.batcher``), which
  measures how many images a second it embeds (``Throughput``). A request of n images is let
  in while (images admitted and not yet embedded + n) / that rate is at most
  ``max_queue_seconds``; otherwise it is refused at once with ``Busy`` (503) and a
  ``Retry-After`` of the estimated wait of the work ahead. A request always gets in when
  nothing is queued, so a slow model still serves one request at a time. Waiting requests
  hold only their compressed bytes (the upload as the HTTP layer keeps it): images are
  decoded by the worker when their batch is formed;
* decoded pixels: each image reserves the bytes its decoding needs (known from its header,
  after Pillow's JPEG ``draft`` has chosen a reduced scale) from ``max_decode_bytes`` while
  it is decoded, then it is shrunk at once to the size the model resizes it to, so an
  8000x8000 PNG lives in memory whole only inside that reservation;
* the process's resident memory: over ``memory_limit_bytes`` nothing new is admitted, and
  an admitted request stops at its next check (``check_memory``: before each image is
  decoded), so the ceiling holds while requests run, not only when they arrive.

A queue bounded by time, not by slots: a burst that the worker clears within the bound is
served whole, and what would wait longer is told at once when to come back.
"""

from __future__ import annotations

import math
import os
import threading
import time
from contextlib import contextmanager

from imprinting.serve.validation import ApiError

# A 2-core, 4 GB box: the model and runtime (~0.5-1 GB) plus this much for requests.
DEFAULT_MEMORY_LIMIT_MB = 3072
DEFAULT_MAX_QUEUE_SECONDS = 30.0
# Images a second assumed before the worker has measured anything: low, so that an unmeasured
# service admits little (30 s of it: 60 images) rather than a queue it cannot clear in time.
UNMEASURED_IMAGES_PER_S = 2.0
MEMORY_RETRY_SECONDS = 2  # Retry-After over the memory ceiling (at least; more with a queue)


class Busy(ApiError):
    """503: the service is at one of its bounds; retry after ``retry_after`` seconds."""

    def __init__(self, detail: str, retry_after: int):
        super().__init__(503, "busy", detail, headers={"Retry-After": str(retry_after)})


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident memory (Linux /proc; None elsewhere): one system call, a
    ``pread`` of /proc/self/statm, which is kept open."""
    try:
        return int(os.pread(_statm(), 128, 0).split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


_STATM: tuple[int, int] | None = None  # (process id, descriptor of its /proc/self/statm), one per process
_STATM_LOCK = threading.Lock()


def _statm() -> int:
    """This process's /proc/self/statm, opened once (again in a forked child)."""
    global _STATM
    with _STATM_LOCK:
        if _STATM is None or _STATM[0] != os.getpid():
            _STATM = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY))
        return _STATM[1]


RESIDENT_MAX_AGE = 0.05  # seconds a reading of the resident memory serves check_memory


class _RecentResident:
    """``resident_bytes`` read at most once per ``RESIDENT_MAX_AGE``. Checked before every
    image, the reading must cost the decoding threads little: every system call gives up the
    interpreter lock, and under load getting it back may take milliseconds while the event
    loop runs (docs/serve.md, "Memory"). Thread-safe: the reading and its time are replaced as
    one pair."""

    def __init__(self):
        self._last = (-1.0, None)

    def __call__(self) -> int | None:
        when, value = self._last
        now = time.monotonic()
        if now - when > RESIDENT_MAX_AGE:
            value = self._read()
            self._last = (now, value)
        return value

    _read = staticmethod(resident_bytes)


class Throughput:
    """Images a second of the inference worker: its images over its busy seconds (decoding
    and forward, not the wait for a batch to fill), each batch's weight decaying by ``keep``
    per later batch, so it follows a change of load within a few batches. Thread-safe."""

    def __init__(self, keep: float = 0.8):
        self.keep = keep
        self._pair = (0.0, 0.0)  # (images, seconds), replaced whole: read without the lock
        self.measured = False  # True after the first real batch (a warm-up only seeds it)
        self._lock = threading.Lock()

    def record(self, images: int, seconds: float) -> None:
        with self._lock:
            old_images, old_seconds = self._pair
            self._pair = (self.keep * old_images + images, self.keep * old_seconds + max(seconds, 1e-6))
            self.measured = True

    def seed(self, images: int, seconds: float) -> None:
        """A first estimate (the warm-up's), replaced by the worker's batches as they come."""
        with self._lock:
            if not self.measured:
                self._pair = (float(images), max(seconds, 1e-6))

    @property
    def rate(self) -> float:
        """Images a second (``UNMEASURED_IMAGES_PER_S`` before anything was measured)."""
        images, seconds = self._pair  # one read of both: no lock for /health
        return images / seconds if images > 0 else UNMEASURED_IMAGES_PER_S


class Admission:
    """The shared bounds (see the module). Thread-safe; one per service."""

    def __init__(self, *, max_queue_seconds: float = DEFAULT_MAX_QUEUE_SECONDS,
                 memory_limit_mb: float | None = DEFAULT_MEMORY_LIMIT_MB, max_decode_mb: float | None = None,
                 decode_wait_seconds: float = 2.0, throughput: Throughput | None = None):
        """``memory_limit_mb=None``: no ceiling on the process (a library user's process is
        not the service's alone); decoding is then bounded by the default ceiling's quarter.
        ``decode_wait_seconds``: how long an image waits for decoding memory (503 after)."""
        if not max_queue_seconds > 0 or (memory_limit_mb is not None and memory_limit_mb <= 0) \
                or decode_wait_seconds < 0:
            raise ValueError("admission bounds must be positive")
        self.max_queue_seconds = float(max_queue_seconds)
        self.memory_limit = None if memory_limit_mb is None else int(memory_limit_mb * 2**20)
        # a quarter of the ceiling for decoding: one 64 M-pixel RGBA image fits in the default
        quarter = (memory_limit_mb or DEFAULT_MEMORY_LIMIT_MB) / 4
        self.max_decode = int((max_decode_mb if max_decode_mb is not None else quarter) * 2**20)
        self.decode_wait_seconds = decode_wait_seconds
        self.throughput = throughput or Throughput()
        self._cond = threading.Condition()
        self.images = 0  # admitted and not yet embedded (queued or in the worker's batch)
        self.requests = 0
        self.decode_bytes = 0
        self._resident = _RecentResident()

    def limits(self) -> dict:
        ceiling = None if self.memory_limit is None else round(self.memory_limit / 2**20)
        return {"max_queue_seconds": self.max_queue_seconds, "memory_limit_mb": ceiling,
                "max_decode_mb": round(self.max_decode / 2**20)}

    def state(self) -> dict:
        """What is in flight now (read without waiting: for /health)."""
        rss = resident_bytes()
        return {"images_in_flight": self.images, "requests_in_flight": self.requests,
                "decode_mb": round(self.decode_bytes / 2**20, 1),
                "resident_mb": None if rss is None else round(rss / 2**20)}

    def queue(self) -> dict:
        """The queue for /health: images admitted and not yet embedded, the requests they
        belong to, the estimated wait of a request arriving now, the measured rate."""
        return {"depth": self.images, "requests": self.requests, "estimated_wait_s": round(self.estimate(), 2),
                "throughput_images_per_s": round(self.throughput.rate, 1),
                "throughput_measured": self.throughput.measured}

    def estimate(self, extra: int = 0) -> float:
        """Seconds until the work admitted now, plus ``extra`` images, is embedded."""
        return (self.images + extra) / self.throughput.rate

    def _retry_after(self) -> int:
        """The estimated wait, at most twice the bound: a rate dragged down by a few huge
        images must not send every client away for minutes."""
        return max(1, min(math.ceil(self.estimate()), math.ceil(2 * self.max_queue_seconds)))

    def full(self) -> tuple[str, int] | None:
        """(why, retry-after) when even a one-image request would wait over the bound: a
        request arriving now may be refused before its body is read. Else None."""
        if self.images and self.estimate(1) > self.max_queue_seconds:
            return self._too_long(1), self._retry_after()
        return None

    def _too_long(self, n: int) -> str:
        return (f"the server is busy: {self.images} images are queued ahead, about {self.estimate():.1f} s of work "
                f"at {self.throughput.rate:.1f} images/s; {n} more would be answered after the limit of "
                f"{self.max_queue_seconds:g} s; retry after Retry-After seconds")

    def check_memory(self, name: str | None = None) -> None:
        """``Busy`` (503) when the process's resident memory is over the ceiling now: at
        admission, and while a request works (before each image is decoded, ``name``), so
        work that makes the process grow stops at the next image. No ceiling
        (``memory_limit_mb=None``) or no /proc: nothing to check."""
        rss = self._resident() if self.memory_limit is not None else None
        if rss is not None and rss > self.memory_limit:
            where = f"{name}: " if name else ""
            raise Busy(f"{where}the server is using {rss / 2**20:.0f} MiB, over its ceiling of "
                       f"{self.memory_limit / 2**20:.0f} MiB; retry shortly",
                       max(MEMORY_RETRY_SECONDS, self._retry_after()))

    @contextmanager
    def admit(self, n: int):
        """Admit a request of ``n`` images for the ``with`` block (its place in the queue
        until its embeddings are computed), or refuse it with ``Busy``."""
        self.check_memory()
        with self._cond:
            if self.images and self.estimate(n) > self.max_queue_seconds:
                raise Busy(self._too_long(n), self._retry_after())
            self.images += n
            self.requests += 1
        try:
            yield
        finally:
            with self._cond:
                self.images -= n
                self.requests -= 1

    @contextmanager
    def decoding(self, nbytes: int, name: str):
        """Reserve ``nbytes`` of decoding memory for one image for the ``with`` block."""
        if nbytes > self.max_decode:
            raise ApiError(413, "too_many_pixels", f"{name}: decoding it would take {nbytes / 2**20:.0f} MiB; the "
                                                   f"limit is {self.max_decode / 2**20:.0f} MiB")
        deadline = time.monotonic() + self.decode_wait_seconds
        with self._cond:
            while self.decode_bytes + nbytes > self.max_decode:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if self.decode_bytes + nbytes > self.max_decode:
                        raise Busy(f"the server is busy: {self.max_decode / 2**20:.0f} MiB of images are being "
                                   "decoded already; retry shortly", MEMORY_RETRY_SECONDS)
            self.decode_bytes += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.decode_bytes -= nbytes
                self._cond.notify_all()
