"""A plain folder of class folders: ``<path>/<class name>/<image files>``.

Class names are the sub-folder names, sorted; images are the files directly inside each class
folder whose extension is in ``IMAGE_EXTENSIONS`` (any case), sorted. Hidden entries (names
starting with ``.``) and loose files next to the class folders are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

from imprinting.data import DatasetError, ImageSet
from imprinting.data.images import IMAGE_EXTENSIONS


def read_folder(path: str | os.PathLike) -> ImageSet:
    """Every image of every class folder under ``path``; label = index of the sorted class name.

    A missing path, a folder without class folders, or a class folder without images is a
    ``DatasetError`` that names the folder.
    """
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such folder")
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{path}: folder has no class folders (expected <class name>/<images>)")
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(class_dirs):
        files = sorted(
            f for f in folder.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DatasetError(f"{folder}: class folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(files)
        labels.extend([label] * len(files))
    return ImageSet(f"folder/{path.name}", paths, labels, [p.name for p in class_dirs])
