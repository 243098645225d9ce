"""iNaturalist 2017 through its official COCO-style JSON annotations.

Layout: ``<root>/{train2017.json, val2017.json}`` and the images at the ``file_name`` paths
those files give, relative to ``<root>`` (officially ``train_val_images/<Super>/<Species>/*.jpg``).
Each JSON file holds ``images`` (``id``, ``file_name``), ``annotations`` (``image_id``,
``category_id``; one per image) and ``categories`` (``id``, ``name``).

The paper's split: the 1,240 classes with at least 100 training images are base classes,
the other 3,849 novel (``imprinting.data.splits.base_novel_split(train, "inaturalist")``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from imprinting.data import DatasetError, ImageSet

SPLITS = ("train", "val")


def _field(path: Path, entry, where: str, key: str, kind):
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetError(f"{path}: {where} has no {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"{path}: {where}[{key!r}] should be {kind.__name__}, got {value!r}")
    return value


def _list(path: Path, data, key: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DatasetError(f"{path}: no {key!r} list")
    return data[key]


def read_inaturalist(root: str | os.PathLike, split: str = "train") -> ImageSet:
    """One official split (``train`` or ``val``) from ``<root>/<split>2017.json``.

    Labels index the categories sorted by id (``class_names`` are their names, all of them,
    with images in this split or not); ``meta["category_ids"][label]`` is the category id,
    ``meta["split"]`` the split. Images keep the JSON file's order.
    """
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    path = root / f"{split}2017.json"
    if not path.is_file():
        raise DatasetError(f"{path}: missing (iNaturalist 2017 needs train2017.json and val2017.json)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None

    categories = _list(path, data, "categories")
    names: dict[int, str] = {}
    for k, c in enumerate(categories):
        cid = _field(path, c, f"categories[{k}]", "id", int)
        if cid in names:
            raise DatasetError(f"{path}: categories[{k}]: category id {cid} listed twice")
        names[cid] = _field(path, c, f"categories[{k}]", "name", str)
    if not names:
        raise DatasetError(f"{path}: no categories")
    category_ids = sorted(names)
    label_of = {cid: label for label, cid in enumerate(category_ids)}

    category_of: dict[int, int] = {}
    for k, a in enumerate(_list(path, data, "annotations")):
        image_id = _field(path, a, f"annotations[{k}]", "image_id", int)
        cid = _field(path, a, f"annotations[{k}]", "category_id", int)
        if cid not in label_of:
            raise DatasetError(f"{path}: annotations[{k}]: category id {cid} is not in categories")
        if image_id in category_of:
            raise DatasetError(f"{path}: annotations[{k}]: image id {image_id} annotated twice")
        category_of[image_id] = cid

    paths: list[Path] = []
    labels: list[int] = []
    seen: set[int] = set()
    for k, im in enumerate(_list(path, data, "images")):
        image_id = _field(path, im, f"images[{k}]", "id", int)
        file_name = _field(path, im, f"images[{k}]", "file_name", str)
        if image_id in seen:
            raise DatasetError(f"{path}: images[{k}]: image id {image_id} listed twice")
        seen.add(image_id)
        if image_id not in category_of:
            raise DatasetError(f"{path}: images[{k}]: image id {image_id} has no annotation")
        paths.append(root / file_name)
        labels.append(label_of[category_of[image_id]])
    if not paths:
        raise DatasetError(f"{path}: no images")
    extra = set(category_of) - seen
    if extra:
        raise DatasetError(f"{path}: annotation for image id {min(extra)}, which is not in images")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{missing[0]}: listed in {path} but missing ({len(missing)} files missing)")
    meta = {"split": split, "category_ids": category_ids}
    return ImageSet(f"inaturalist/{split}", paths, labels, [names[c] for c in category_ids], meta)
