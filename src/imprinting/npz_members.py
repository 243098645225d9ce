"""Reading one array of a numpy archive that may come from anywhere (numpy only): its dtype,
shape and size checked from its ``.npy`` header before anything is allocated, so a damaged or
hostile ``classes.npz`` costs no memory to refuse (``imprinting.classes_file``)."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from imprinting.errors import ExportFormatError

# No array in a classes file may declare more than this many times the file's size on disk
# (plus ``EXPANSION_SLACK`` bytes). ``save_classes`` stores arrays uncompressed (ratio <= 1);
# the margin admits a hand-compressed copy of real-valued arrays, never a compression bomb.
MAX_EXPANSION = 64
EXPANSION_SLACK = 1 << 20


def member_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, path: Path,
                   limit: int) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from the ``.npy`` header of one archive member, without reading its data.

    Refuses an object array (it would need pickle), a member whose declared size differs from
    what the archive holds for it, and one larger than ``limit`` bytes (the module docstring)."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ExportFormatError(f"{path}: damaged classes file ({key} is a .npy file of version {version})")
        start = member.tell()
    if dtype.hasobject:
        raise ExportFormatError(f"{path}: truncated or corrupt classes file ({key} holds Python objects, "
                                "which only pickle could read)")
    size = start + math.prod(shape) * dtype.itemsize
    if size > limit or info.file_size > limit:
        raise ExportFormatError(
            f"{path}: refused: {key} declares {shape} {dtype} ({max(size, info.file_size):,} bytes), more than "
            f"{MAX_EXPANSION} times the file's size; the file is damaged or made to exhaust memory"
        )
    if size != info.file_size:
        raise ExportFormatError(f"{path}: truncated or corrupt classes file ({key} declares {shape} {dtype}, "
                                f"{size:,} bytes, but the archive holds {info.file_size:,} bytes for it)")
    return shape, dtype


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One member's array (its header already checked by ``member_header``)."""
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)
