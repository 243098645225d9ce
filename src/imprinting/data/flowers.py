"""Oxford Flowers-102 through ``torchvision.datasets.Flowers102``.

Layout: ``<root>/flowers102/flowers-102/{jpg/, imagelabels.mat, setid.mat}``. When it is not
there, torchvision's official downloader fetches it; offline, a ``DatasetError`` says where
to put the files. Classes carry the data set's published category names (``flowers102_names.txt``,
``CLASS_NAMES``), in label order.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchvision.datasets import Flowers102

from imprinting.data import DatasetError, ImageSet, data_root

NUM_CLASSES = 102
SPLITS = ("train", "val", "test")


def _class_names() -> list[str]:
    """The 102 category names from the package's ``flowers102_names.txt`` (comments skipped)."""
    text = (Path(__file__).with_name("flowers102_names.txt")).read_text(encoding="utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(names) != NUM_CLASSES or len(set(names)) != NUM_CLASSES:
        raise DatasetError(f"flowers102_names.txt: expected {NUM_CLASSES} distinct names, found {len(names)}")
    return names


CLASS_NAMES = tuple(_class_names())  # class k + 1 of the data set (label k)


def _open(folder: Path, split: str, download: bool):
    try:
        return Flowers102(str(folder), split=split, download=False)
    except RuntimeError:
        if not download:
            raise DatasetError(_missing(folder)) from None
    try:
        return Flowers102(str(folder), split=split, download=True)
    except Exception as exc:  # URLError, HTTPError, socket errors, checksum failures
        raise DatasetError(f"{_missing(folder)} The download failed: {exc}") from None


def _missing(folder: Path) -> str:
    return (
        f"Flowers-102 is not in {folder / 'flowers-102'}: put jpg/, imagelabels.mat and setid.mat there "
        "(from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/), or allow the download."
    )


def read_flowers102(root: str | os.PathLike | None = None, split: str = "train", download: bool = True) -> ImageSet:
    """One official split (``train``, ``val`` or ``test``); labels 0..101 (class k+1 of the paper)."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    folder = data_root(root) / "flowers102"
    ds = _open(folder, split, download)
    names = list(CLASS_NAMES)
    paths = [Path(p) for p in ds._image_files]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{missing[0]}: listed in setid.mat but missing ({len(missing)} files missing)")
    return ImageSet(f"flowers102/{split}", paths, [int(y) for y in ds._labels], names, {"split": split})
