"""Atomic file writes (no torch: the lite runtime uses this too)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

# A temporary file this old, that no writer holds locked, is litter of an interrupted save.
STALE_SECONDS = 60

try:
    import fcntl

    _HAVE_FLOCK = True
except ImportError:
    _HAVE_FLOCK = False


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)``, then fsync and rename the temporary file onto ``path``.

    A crash at any moment leaves either the old file or the new one, never a half-written
    file. The new file gets the old file's permissions (or the umask's), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if not _lock(fd):  # held until the rename: tells a later save that this file is not litter
        raise OSError(f"{tmp}: locked by another writer")
    if not _HAVE_FLOCK:  # Windows: an open file cannot be renamed
        os.close(fd)
        fd = None
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        if fd is not None:
            os.close(fd)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is done regardless
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _file_mode(path: Path) -> int:
    """The mode of the file being replaced, else what a new file gets under the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files that saves of ``path`` killed mid-write left beside it
    (``.NAME.*.tmp``, older than a minute and locked by no live writer). Returns them."""
    removed = []
    try:
        candidates = list(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        try:
            if time.time() - tmp.stat().st_mtime < STALE_SECONDS:
                continue
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _lock(fd, wait=False):
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _lock(fd: int, wait: bool = True) -> bool:
    """An exclusive ``flock`` on ``fd``; False if another holds it (and not ``wait``).
    True where there is no ``fcntl`` (Windows: stale files are then judged by age alone)."""
    if not _HAVE_FLOCK:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
