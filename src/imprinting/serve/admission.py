"""Admission control: what the service lets in at once, across all requests.

Three bounds keep the memory of the process under a ceiling whatever the request mix:

* images in flight: a request holds one slot per image from before its bytes are read
  until its embeddings are computed; the forward passes of all requests together never see
  more images than ``max_images_in_flight``;
* decoded pixels: each image reserves the bytes its decoding needs (known from its header,
  after Pillow's JPEG ``draft`` has chosen a reduced scale) from ``max_decode_bytes`` while
  it is decoded, then it is shrunk at once to the size the model resizes it to, so an
  8000x8000 PNG lives in memory whole only inside that reservation;
* the process's resident memory: over ``memory_limit_bytes`` nothing new is admitted, and
  a request already admitted stops at its next check (``check_memory``: before each image
  it decodes), so the ceiling holds while requests run, not only when they arrive.

What does not fit within ``wait_seconds`` is refused fast with ``Busy`` (the service answers
503 with ``Retry-After``): a queue that grows without bound is a slow death for everyone.
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


class Busy(ApiError):
    """503: the service is at one of its bounds; retry after ``retry_after`` seconds."""

    def __init__(self, detail: str, retry_after: int):
        super().__init__(503, "busy", detail, headers={"Retry-After": str(retry_after)})


def resident_bytes() -> int | None:
    """This process's resident memory (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Admission:
    """The shared bounds (see the module). Thread-safe; one per service."""

    def __init__(self, *, max_images_in_flight: int = 32, memory_limit_mb: float | None = DEFAULT_MEMORY_LIMIT_MB,
                 max_decode_mb: float | None = None, wait_seconds: float = 2.0):
        """``memory_limit_mb=None``: no ceiling on the process (a library user's process is
        not the service's alone); decoding is then bounded by the default ceiling's quarter."""
        if max_images_in_flight < 1 or (memory_limit_mb is not None and memory_limit_mb <= 0) or wait_seconds < 0:
            raise ValueError("admission bounds must be positive")
        self.max_images = int(max_images_in_flight)
        self.memory_limit = None if memory_limit_mb is None else int(memory_limit_mb * 2**20)
        # a quarter of the ceiling for decoding: one 64 M-pixel RGBA image fits in the default
        quarter = (memory_limit_mb or DEFAULT_MEMORY_LIMIT_MB) / 4
        self.max_decode = int((max_decode_mb if max_decode_mb is not None else quarter) * 2**20)
        self.wait_seconds = wait_seconds
        self._cond = threading.Condition()
        self.images = 0
        self.decode_bytes = 0
        self.waiting = 0  # requests waiting for image slots
        self.max_waiting = max(4, self.max_images // 4)

    def limits(self) -> dict:
        ceiling = None if self.memory_limit is None else round(self.memory_limit / 2**20)
        return {"max_images_in_flight": self.max_images, "memory_limit_mb": ceiling,
                "max_decode_mb": round(self.max_decode / 2**20)}

    def state(self) -> dict:
        """What is in flight now (read without waiting: for /health)."""
        rss = resident_bytes()
        return {"images_in_flight": self.images, "requests_waiting": self.waiting, "decode_mb": round(self.decode_bytes / 2**20, 1),
                "resident_mb": None if rss is None else round(rss / 2**20)}

    def full(self) -> tuple[str, int] | None:
        """(why, retry-after) when every image slot is taken and more than ``max_waiting``
        requests wait for one already, else None: a request arriving now would only join
        that queue, so it may be refused before its body is even read."""
        if self.images >= self.max_images and self.waiting > self.max_waiting:
            return (f"the server is busy: {self.max_images} images are being processed and {self.waiting} requests "
                    "wait; retry shortly", self._retry_after())
        return None

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.wait_seconds))

    def check_memory(self, name: str | None = None) -> None:
        """``Busy`` (503) when the process's resident memory is over the ceiling now: at
        admission, and while a request works (``serve.validation.read_images``: before each
        image, ``name``), so work that makes the process grow stops at the next image. No
        ceiling (``memory_limit_mb=None``) or no /proc: nothing to check."""
        rss = resident_bytes() if self.memory_limit is not None else None
        if rss is not None and rss > self.memory_limit:
            where = f"{name}: " if name else ""
            raise Busy(f"{where}the server is using {rss / 2**20:.0f} MiB, over its ceiling of "
                       f"{self.memory_limit / 2**20:.0f} MiB; retry shortly", self._retry_after())

    @contextmanager
    def admit(self, n: int):
        """Hold ``n`` image slots (the request's images) for the ``with`` block."""
        self.check_memory()
        n = min(n, self.max_images)  # a request over the bound alone still runs, by itself
        self._take("images", n, self.max_images,
                   f"{self.max_images} images are being processed already (the limit across all requests)")
        try:
            yield
        finally:
            self._give("images", n)

    @contextmanager
    def decoding(self, nbytes: int, name: str):
        """Reserve ``nbytes`` of decoding memory for one image for the ``with`` block."""
        if nbytes > self.max_decode:
            raise ApiError(413, "too_many_pixels", f"{name}: decoding it would take {nbytes / 2**20:.0f} MiB; the "
                                                   f"limit is {self.max_decode / 2**20:.0f} MiB")
        self._take("decode_bytes", nbytes, self.max_decode,
                   f"{self.max_decode / 2**20:.0f} MiB of images are being decoded already")
        try:
            yield
        finally:
            self._give("decode_bytes", nbytes)

    def _take(self, what: str, amount: int, limit: int, why: str) -> None:
        deadline = time.monotonic() + self.wait_seconds
        with self._cond:
            queued = what == "images" and getattr(self, what) + amount > limit
            self.waiting += queued
            try:
                while getattr(self, what) + amount > limit:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait(left):
                        if getattr(self, what) + amount > limit:
                            raise Busy(f"the server is busy: {why}; retry shortly", self._retry_after())
                setattr(self, what, getattr(self, what) + amount)
            finally:
                self.waiting -= queued

    def _give(self, what: str, amount: int) -> None:
        with self._cond:
            setattr(self, what, getattr(self, what) - amount)
            self._cond.notify_all()
