"""The iNaturalist 2017 configuration end to end on a tiny copy of the official layout.

`imprint reproduce tables --dataset inaturalist --dim 256 --data-root ROOT` is the command a
user runs on the official data (docs/scaling.md); here ROOT holds train2017.json,
val2017.json and tiny JPEGs at the official paths, with two classes of >= 100 training
images (base, by the paper's rule) and two of fewer (novel).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from experiments_fixtures import png_size
from imprinting.cli import main

# category id -> (name, supercategory, training images, validation images, colour)
CLASSES = {
    3: ("Danaus plexippus", "Insecta", 100, 3, (230, 120, 20)),
    8: ("Quercus alba", "Plantae", 101, 3, (40, 160, 40)),
    12: ("Cardinalis cardinalis", "Aves", 4, 3, (200, 20, 30)),
    20: ("Cyanocitta cristata", "Aves", 3, 3, (30, 60, 220)),
}


def write_inaturalist(root: Path) -> Path:
    rng = np.random.default_rng(0)
    image_id = 0
    for split, column in (("train", 2), ("val", 3)):
        images, annotations = [], []
        for cid, spec in CLASSES.items():
            name, supercategory, colour = spec[0], spec[1], spec[4]
            for k in range(spec[column]):
                image_id += 1
                file_name = f"train_val_images/{supercategory}/{name}/{split}_{k}.jpg"
                pixels = np.clip(np.array(colour) + rng.integers(-30, 31, (12, 12, 3)), 0, 255).astype(np.uint8)
                (root / file_name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / file_name)
                images.append({"id": image_id, "file_name": file_name, "width": 12, "height": 12})
                annotations.append({"id": image_id, "image_id": image_id, "category_id": cid})
        categories = [{"id": cid, "name": s[0], "supercategory": s[1]} for cid, s in CLASSES.items()]
        doc = {"info": {"year": 2017}, "images": images, "annotations": annotations, "categories": categories}
        (root / f"{split}2017.json").write_text(json.dumps(doc))
    return root


def test_inaturalist_2017_protocol_end_to_end(tmp_path):
    root = write_inaturalist(tmp_path / "inat")
    out = tmp_path / "results"
    result = CliRunner().invoke(main, [
        "reproduce", "tables", "--dataset", "inaturalist", "--dim", "256", "--data-root", str(root),
        "--image-size", "32", "--augment", "2", "-n", "1", "-n", "2", "--draws", "1", "--epochs", "1",
        "--cache", str(tmp_path / "cache"), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "tables_1_2_full.json").read_text())
    assert "2 base + 2 novel classes" in doc["provenance"]["data"]  # >= 100 training images: base
    assert "208 train / 12 test images" in doc["provenance"]["data"]
    rows = doc["rows"]
    assert {r["method"] for r in rows} == {"Rand-noFT", "Imprinting", "Imprinting+Aug", "Rand+FT", "Imprinting+FT",
                                           "AllClassJoint", "WhitenedMeans (chosen on training data)"}
    assert {r["n"] for r in rows} == {1, 2}
    assert (out / "tables_1_2.md").read_text().startswith("# Tables 1 and 2")
    assert png_size(out / "figures_3_4.png") == (1210, 440)
