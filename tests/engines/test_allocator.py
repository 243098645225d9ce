"""The glibc allocator settings (``engines.allocator``), each in a fresh Python process (they
hold for a whole process): counted in minor page faults and resident memory, which is what
they are for. Skipped where the C library is not glibc."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc's (mallopt, malloc_trim)")

PROBE = """
import ctypes, importlib.util, resource, sys
spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])  # the module alone: no torch to import
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.malloc.argtypes = [ctypes.c_size_t]

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

def touched(size):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    return p

if sys.argv[1] == "serve":
    assert allocator.serve_freed_memory()
elif sys.argv[1] == "old":  # the server's setting before: blocks over 1 MiB mapped afresh
    libc.mallopt(allocator.M_MMAP_THRESHOLD, 1 << 20)
    libc.mallopt(allocator.M_TRIM_THRESHOLD, 1 << 20)
size = 19 << 20  # a batch of 32 photos at 224 px, float32
libc.free(touched(size))
before = faults()
for _ in range(5):  # the same batch again and again, as under load
    libc.free(touched(size))
again = (faults() - before) / 5
# 40 blocks of 1 MiB, all freed but the last: the free ones lie under a live block
blocks = [touched(1 << 20) for _ in range(40)]
for p in blocks[:-1]:
    libc.free(p)
held = rss_mib()
allocator.release_free_memory()
print(again, held - rss_mib())
"""


def probe(setting: str) -> tuple[float, float]:
    from imprinting.engines import allocator

    out = subprocess.run([sys.executable, "-c", PROBE, setting, allocator.__file__], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    faults, released = out.stdout.split()
    return float(faults), float(released)


def test_the_servers_setting_reuses_a_batchs_memory_and_gives_it_back_when_asked():
    page_faults, released = probe("serve")
    pages = (19 << 20) / 4096  # 4864 pages of 4 KiB
    assert page_faults < 0.05 * pages  # the block is reused: no page is faulted in again
    assert released >= 30  # malloc_trim returns the freed 39 MiB under the live block


def test_blocks_mapped_afresh_fault_every_page_in_again():
    """The comparison the setting is measured against: with blocks over 1 MiB mapped on their
    own (the server's setting before), every batch faults all of its pages in."""
    page_faults, _ = probe("old")
    assert page_faults > 0.9 * (19 << 20) / 4096
