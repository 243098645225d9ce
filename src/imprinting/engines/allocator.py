"""glibc malloc tuned for PyTorch's large, short-lived tensors (training and extraction).

By default glibc serves every block above its mmap threshold (128 KiB, raised dynamically
up to 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` on free, and trims the
heap top above 128 KiB: each batch's activations are then new pages, zeroed by the kernel
on first touch (minor page faults, kernel time). ``keep_freed_memory`` raises both
thresholds (``mallopt`` through ctypes), so freed blocks are reused from the heap. The
``imprint`` command calls it at start; measured by ``benchmarks/engines.py --allocator``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # the heap top is never trimmed (mallopt takes an int)

_applied: str | None = None


def keep_freed_memory() -> str | None:
    """Apply the setting once per process; returns what was set, or ``None`` where there
    is no glibc (macOS, musl, Windows) or it refused. Safe to call more than once."""
    global _applied
    if _applied is not None:
        return _applied
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return None
    if ok:
        _applied = f"glibc mallopt M_MMAP_THRESHOLD={MMAP_THRESHOLD}, M_TRIM_THRESHOLD={TRIM_THRESHOLD}"
    return _applied
