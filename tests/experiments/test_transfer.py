"""`imprint transfer` (Table 3 on Flowers-102) end to end on a slice of Flowers-102: the
command, the protocol under it, and its numbers recomputed here by hand."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from experiments_fixtures import top1_by_hand
from imprinting.data import ImageSet


def _slice(image_set, classes: int, step: int = 1) -> ImageSet:
    """The images of the first ``classes`` classes (every ``step``-th), those classes only."""
    keep = [i for i, y in enumerate(image_set.labels) if y < classes][::step]
    return ImageSet(f"{image_set.name}-first{classes}-{step}", [image_set.paths[i] for i in keep],
                    [image_set.labels[i] for i in keep], image_set.class_names[:classes], dict(image_set.meta))


@pytest.fixture
def flowers_slice(shared_data, monkeypatch):
    """``read_flowers102`` gives 8 classes: 80 training images, a third of their test images."""
    from imprinting.data import flowers
    from imprinting.experiments import runner

    read = flowers.read_flowers102
    monkeypatch.setattr(runner, "read_flowers102",
                        lambda root, split, **kw: _slice(read(root, split, download=False), 8, 1 if split == "train" else 3))
    return shared_data


def test_transfer_command_on_a_flowers_slice(flowers_slice, tmp_path):
    from imprinting import checkpoint
    from imprinting.cli import main

    out, model = tmp_path / "flowers102", tmp_path / "flowers.safetensors"
    result = CliRunner().invoke(main, ["transfer", "--data-root", str(flowers_slice), "--image-size", "96",
                                       "--augment", "2", "-n", "1", "-n", "5", "--draws", "2", "--out", str(out),
                                       "--save-model", str(model)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "# Transfer learning by imprinting on Flowers-102 (top-1 %, test split)" in result.output
    assert f"wrote {model}: 8 classes" in result.output
    doc = json.loads((out / "transfer.json").read_text())
    assert "(80 train / " in doc["provenance"]["data"] and "image size 96" in doc["provenance"]["backbone"]
    rows = doc["rows"]
    assert [(r["method"], r["n"]) for r in rows] == [(m, n) for n in (1, 5)
                                                     for m in ("Rand-noFT", "Imprinting", "Imprinting+Aug")]
    assert {r["draws"] for r in rows} == {2}
    imp = [r for r in rows if r["method"] == "Imprinting"]
    assert all(r["ms_per_class_from_jpeg"] > 0 and r["imprint_us_per_class"] > 0 for r in imp)
    assert all(r["imprint_us_per_class"] == "" and "ms_per_class_from_jpeg" not in r for r in rows
               if r["method"] != "Imprinting")
    assert checkpoint.load(model).num_classes == 8

    # Imprinting's top-1, by hand: normalized means of the normalized features of the shots.
    from imprinting import protocol
    from imprinting.experiments import REGISTRY
    from imprinting.experiments.runner import SETUPS
    from types import SimpleNamespace

    o = SimpleNamespace(data_root=flowers_slice, backbone="efficientnet_lite0", image_size=96, augment=2, seed=0,
                        cache=None, out=out)
    data = SETUPS[REGISTRY["transfer"].data](o).data
    emb = torch.nn.functional.normalize(data.train_feats, dim=1).numpy()
    test = torch.nn.functional.normalize(data.test_feats, dim=1).numpy()
    for n, row in zip((1, 5), imp):
        accs = []
        for ep in (e for e in protocol.episodes(data, (1, 5), 2, 0) if e.n == n):
            y = data.train_y[ep.shots].numpy()
            w = np.stack([emb[ep.shots.numpy()][y == c].mean(0) for c in range(8)])
            w /= np.linalg.norm(w, axis=1, keepdims=True)
            accs.append(top1_by_hand(torch.from_numpy(test @ w.T), data)["all"])
        assert row["top1_mean"] == pytest.approx(np.mean(accs), abs=0.006)
        assert row["top1_std"] == pytest.approx(np.std(accs), abs=0.006)
    rand = {r["n"]: r["top1_mean"] for r in rows if r["method"] == "Rand-noFT"}
    assert rand[1] == rand[5] < imp[0]["top1_mean"]  # the same random vectors at every n; near chance
