"""read_inaturalist on a tiny copy of the official iNaturalist 2017 JSON layout written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from imprinting.data import DatasetError
from imprinting.data.inaturalist import read_inaturalist

# category ids deliberately out of order; labels follow sorted ids: 2 -> 0, 5 -> 1, 9 -> 2
CATEGORIES = [{"id": 5, "name": "Aves sp", "supercategory": "Aves"},
              {"id": 2, "name": "Plantae sp", "supercategory": "Plantae"},
              {"id": 9, "name": "Insecta sp", "supercategory": "Insecta"}]
TRAIN = [(10, "train_val_images/Aves/Aves sp/a1.jpg", 5),
         (11, "train_val_images/Plantae/Plantae sp/p1.jpg", 2),
         (12, "train_val_images/Aves/Aves sp/a2.jpg", 5),
         (14, "train_val_images/Insecta/Insecta sp/i1.jpg", 9)]
VAL = [(20, "train_val_images/Plantae/Plantae sp/p9.jpg", 2)]


def coco(images, categories=CATEGORIES) -> dict:
    return {
        "info": {"year": 2017},
        "images": [{"id": i, "file_name": f, "width": 4, "height": 4} for i, f, _ in images],
        "annotations": [{"id": 100 + k, "image_id": i, "category_id": c} for k, (i, _, c) in enumerate(images)],
        "categories": categories,
    }


def write_inat(root: Path, train=TRAIN, val=VAL) -> Path:
    for name, images in (("train2017.json", train), ("val2017.json", val)):
        (root / name).write_text(json.dumps(coco(images)))
        for _, file_name, _ in images:
            (root / file_name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (1, 2, 3)).save(root / file_name)
    return root


def test_tiny_train_and_val(tmp_path):
    write_inat(tmp_path)
    train = read_inaturalist(tmp_path, "train")
    assert train.class_names == ["Plantae sp", "Aves sp", "Insecta sp"]
    assert train.meta["category_ids"] == [2, 5, 9]
    assert train.meta["split"] == "train"
    assert train.paths == [tmp_path / f for _, f, _ in TRAIN]
    assert train.labels == [1, 0, 1, 2]
    assert all(p.is_file() for p in train.paths)

    val = read_inaturalist(tmp_path, "val")
    assert val.class_names == train.class_names  # every category, with images or not
    assert val.labels == [0]
    assert val.meta["split"] == "val"


def test_bad_split_name(tmp_path):
    with pytest.raises(ValueError, match="split"):
        read_inaturalist(tmp_path, "test")


def test_missing_json_names_it(tmp_path):
    with pytest.raises(DatasetError, match="train2017.json: missing"):
        read_inaturalist(tmp_path)


def test_invalid_json_names_it(tmp_path):
    write_inat(tmp_path)
    (tmp_path / "val2017.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match="val2017.json: not valid JSON"):
        read_inaturalist(tmp_path, "val")


def _break(tmp_path, change) -> str:
    """Write the tiny copy, apply ``change`` to train2017.json's dict, return read's error."""
    write_inat(tmp_path)
    path = tmp_path / "train2017.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as err:
        read_inaturalist(tmp_path, "train")
    assert "train2017.json" in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("change, expect", [
    (lambda d: d.pop("annotations"), "no 'annotations' list"),
    (lambda d: d.update(images={}), "no 'images' list"),
    (lambda d: d.update(categories=[]), "no categories"),
    (lambda d: d.update(images=[]), "no images"),
    (lambda d: d["images"][2].pop("file_name"), "images[2] has no 'file_name'"),
    (lambda d: d["images"][1].update(id="11"), "images[1]['id'] should be int"),
    (lambda d: d["categories"][0].pop("name"), "categories[0] has no 'name'"),
    (lambda d: d["categories"].append({"id": 5, "name": "again"}), "categories[3]: category id 5 listed twice"),
    (lambda d: d["annotations"][3].update(category_id=7), "annotations[3]: category id 7 is not in categories"),
    (lambda d: d["annotations"][3].update(image_id=10), "annotations[3]: image id 10 annotated twice"),
    (lambda d: d["annotations"].pop(1), "images[1]: image id 11 has no annotation"),
    (lambda d: d["images"].pop(0), "annotation for image id 10, which is not in images"),
    (lambda d: d["images"][3].update(id=12), "images[3]: image id 12 listed twice"),
])
def test_malformed_json_names_file_and_entry(tmp_path, change, expect):
    assert expect in _break(tmp_path, change)


def test_missing_image_names_it(tmp_path):
    write_inat(tmp_path)
    (tmp_path / TRAIN[3][1]).unlink()
    with pytest.raises(DatasetError, match="i1.jpg: listed in .*train2017.json but missing"):
        read_inaturalist(tmp_path, "train")
