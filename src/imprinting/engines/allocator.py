"""glibc malloc tuned for PyTorch's large, short-lived tensors (training and extraction).

By default glibc serves every block above its mmap threshold (128 KiB, raised dynamically
up to 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` on free, and trims the
heap top above 128 KiB: each batch's activations are then new pages, zeroed by the kernel
on first touch (minor page faults, kernel time). ``keep_freed_memory`` raises both
thresholds (``mallopt`` through ctypes), so freed blocks are reused from the heap. The
``imprint`` command calls it at start; measured by ``benchmarks/engines.py --allocator``.

A server lives long and must give the memory of a large request back, yet under load it runs
the same batches again and again. ``serve_freed_memory`` (``imprint serve``) keeps blocks up to
32 MiB (a batch of 32 photos at 224 px is 19 MiB) and 64 MiB of free heap top for reuse, maps
larger blocks (a huge decoded image) on their own so they go back at once, and caps the malloc
arenas; ``release_free_memory`` (``malloc_trim``) gives every free page back, called by the
inference worker once it has been idle for a second (``serve.batcher``). Blocks over 1 MiB
mapped afresh every batch cost page faults, and the TLB flushes they take on a VM (measured in
docs/serve.md, "Load").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # the heap top is never trimmed (mallopt takes an int)

SERVE_MMAP_THRESHOLD = 32 << 20
SERVE_TRIM_THRESHOLD = 64 << 20
SERVE_ARENA_MAX = 4

_applied: str | None = None


@functools.cache
def _glibc():
    """The C library, where it is glibc (else ``None``: macOS, musl, Windows); looked up once."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> str | None:
    """Apply the setting once per process; returns what was set, or ``None`` where there
    is no glibc (macOS, musl, Windows) or it refused. Safe to call more than once."""
    global _applied
    if _applied is not None:
        return _applied
    libc = _glibc()
    if libc is None:
        return None
    try:
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except AttributeError:
        return None
    if ok:
        _applied = f"glibc mallopt M_MMAP_THRESHOLD={MMAP_THRESHOLD}, M_TRIM_THRESHOLD={TRIM_THRESHOLD}"
    return _applied


def serve_freed_memory() -> bool:
    """The server's setting (see the module), for the whole process; False where there is no
    glibc or it refused."""
    global _applied
    libc = _glibc()
    if libc is None:
        return False
    try:
        ok = (libc.mallopt(M_MMAP_THRESHOLD, SERVE_MMAP_THRESHOLD) == 1
              and libc.mallopt(M_TRIM_THRESHOLD, SERVE_TRIM_THRESHOLD) == 1
              and libc.mallopt(M_ARENA_MAX, SERVE_ARENA_MAX) == 1)
    except AttributeError:
        return False
    _applied = None  # keep_freed_memory's setting no longer holds
    return ok


def release_free_memory() -> None:
    """Give the free pages of every malloc arena back to the system (glibc's ``malloc_trim``;
    nothing elsewhere)."""
    libc = _glibc()
    if libc is not None:
        try:
            libc.malloc_trim(0)
        except AttributeError:
            pass
