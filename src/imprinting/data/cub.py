"""Caltech-UCSD Birds-200-2011 in its official layout.

Layout: ``<root>/cub/CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt,
classes.txt, images/NNN.Class_Name/*.jpg}``. Each id file has one ``<id> <value>`` line per
entry. A copy may hold only some classes: the three image files then list only the images
present, while ``classes.txt`` still lists all 200 classes, so labels keep their official
meaning (label = official class id - 1).

The paper's split: classes 1-100 (labels 0-99) are base classes, 101-200 novel.
"""

from __future__ import annotations

import os
from pathlib import Path

from imprinting.data import DatasetError, ImageSet, data_root

SPLITS = ("train", "test")
NUM_BASE = 100  # official class ids 1..100 are the paper's base classes


def _read_pairs(path: Path) -> list[tuple[int, str, int]]:
    """``(id, value, line number)`` for each non-blank ``<id> <value>`` line of ``path``."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing (CUB-200-2011 needs images.txt, image_class_labels.txt, "
                           "train_test_split.txt and classes.txt)")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or not parts[0].isdigit():
                raise DatasetError(f"{path}:{lineno}: expected '<id> <value>', got {line.rstrip()!r}")
            pairs.append((int(parts[0]), parts[1].strip(), lineno))
    if not pairs:
        raise DatasetError(f"{path}: empty")
    return pairs


def _by_image_id(path: Path, image_ids: list[int]) -> dict[int, tuple[str, int]]:
    """``{image id: (value, line number)}`` of ``path``, which must list exactly ``image_ids``."""
    table: dict[int, tuple[str, int]] = {}
    wanted = set(image_ids)
    for i, value, lineno in _read_pairs(path):
        if i in table:
            raise DatasetError(f"{path}:{lineno}: image id {i} listed twice")
        if i not in wanted:
            raise DatasetError(f"{path}:{lineno}: image id {i} is not in images.txt")
        table[i] = (value, lineno)
    for i in image_ids:
        if i not in table:
            raise DatasetError(f"{path}: no line for image id {i} (listed in images.txt)")
    return table


def _class_names(path: Path) -> list[str]:
    names = []
    for i, name, lineno in _read_pairs(path):
        if i != len(names) + 1:
            raise DatasetError(f"{path}:{lineno}: expected class id {len(names) + 1}, got {i}")
        names.append(name)
    return names


def read_cub(root: str | os.PathLike | None = None, split: str = "train") -> ImageSet:
    """One official split (``train`` or ``test``) of CUB-200-2011.

    Labels are official class ids minus 1 (0..199); ``class_names`` has every class of
    ``classes.txt``, with images or not. ``meta["present_classes"]`` is the sorted list of
    labels that have at least one image in the copy (either split); ``meta["split"]`` is the
    split. Images come in ``images.txt`` order.
    """
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    folder = data_root(root) / "cub" / "CUB_200_2011"
    class_names = _class_names(folder / "classes.txt")

    images_file = folder / "images.txt"
    image_rel: dict[int, str] = {}
    for i, rel, lineno in _read_pairs(images_file):
        if i in image_rel:
            raise DatasetError(f"{images_file}:{lineno}: image id {i} listed twice")
        image_rel[i] = rel
    ids = list(image_rel)

    labels_file = folder / "image_class_labels.txt"
    class_of = _by_image_id(labels_file, ids)
    split_file = folder / "train_test_split.txt"
    is_train = _by_image_id(split_file, ids)

    label_of: dict[int, int] = {}
    for i in ids:
        value, lineno = class_of[i]
        if not value.isdigit() or not 1 <= int(value) <= len(class_names):
            raise DatasetError(f"{labels_file}:{lineno}: class id {value!r} is not in classes.txt (1..{len(class_names)})")
        label_of[i] = int(value) - 1
        value, lineno = is_train[i]
        if value not in ("0", "1"):
            raise DatasetError(f"{split_file}:{lineno}: expected 1 (train) or 0 (test), got {value!r}")

    want = "1" if split == "train" else "0"
    chosen = [i for i in ids if is_train[i][0] == want]
    paths = [folder / "images" / image_rel[i] for i in chosen]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{missing[0]}: listed in {images_file} but missing ({len(missing)} files missing)")
    meta = {
        "split": split,
        "present_classes": sorted(set(label_of.values())),
    }
    return ImageSet(f"cub/{split}", paths, [label_of[i] for i in chosen], class_names, meta)


def cub_base_novel(labels) -> tuple[list[int], list[int]]:
    """The paper's split of the given class labels (0-based): ``(base, novel)``, each sorted.

    Base classes are official ids 1..100 (labels 0..99), novel classes the rest.
    """
    labels = sorted(set(int(c) for c in labels))
    return [c for c in labels if c < NUM_BASE], [c for c in labels if c >= NUM_BASE]
