"""Transfer learning by imprinting (Table 3) on a small slice of Flowers-102."""

import pytest

from imprinting import transfer
from imprinting.data.flowers import read_flowers102


def _slice(image_set, classes):
    keep = [i for i, y in enumerate(image_set.labels) if y < classes]
    return image_set.subset(keep)


def test_imprinting_far_above_random_on_flowers(shared_data, tmp_path):
    train = _slice(read_flowers102(shared_data, "train", download=False), 8)
    test = _slice(read_flowers102(shared_data, "test", download=False), 8)
    test = test.subset(range(0, len(test), 3))
    data = transfer.prepare(train, test, image_size=96, augment=2, cache=tmp_path, progress=False)
    assert data.train_emb.shape == (80, 1280) and data.train_aug.shape == (80, 2, 1280)
    rows = transfer.run(data, shots=(1, 5), draws=2)
    acc = {(r["method"], r["n"]): r["top1_mean"] for r in rows}
    # 102 classes' labels but only 8 present: Rand picks among 102 vectors, so it is near 0
    assert acc[("Rand-noFT", 1)] < 10
    assert acc[("Imprinting", 1)] > 40 and acc[("Imprinting", 5)] > acc[("Imprinting", 1)]
    assert acc[("Imprinting+Aug", 5)] > 40
    assert {r["draws"] for r in rows} == {2}


def test_top1_is_argmax_of_cosine():
    import torch

    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    e = torch.tensor([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
    assert transfer.top1(w, e, torch.tensor([0, 1, 1])) == pytest.approx(200 / 3)
