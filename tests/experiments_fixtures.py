"""The one synthetic low-shot data set of the experiment tests: no files, no backbone.

Gaussian clusters, one per class, in a 16-d non-negative "feature" space (like the ReLU6
features of EfficientNet-Lite0, so that power transforms apply): classes 0-5 are base, 6-9
novel; each training point has ``views`` noisy copies as its cached augmented views.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imprinting.data import ImageSet
from imprinting.protocol import LowShotData

CLASSES, BASE, FEAT = 10, 6, 16


def tiny_lowshot(seed: int = 0, train_per_class: int = 20, test_per_class: int = 10, views: int = 3) -> LowShotData:
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(CLASSES, FEAT, generator=g) * 6

    def draw(per):
        y = torch.arange(CLASSES).repeat_interleave(per)
        return (centers[y] + 0.6 * torch.randn(len(y), FEAT, generator=g)).clamp_min(0), y.tolist()

    xtr, ytr = draw(train_per_class)
    xte, yte = draw(test_per_class)
    names = [f"c{i}" for i in range(CLASSES)]
    train = ImageSet("tiny/train", [Path(f"tr{i}.png") for i in range(len(ytr))], ytr, names, {"split": "train"})
    test = ImageSet("tiny/test", [Path(f"te{i}.png") for i in range(len(yte))], yte, names, {"split": "test"})
    aug = (xtr[:, None, :] + 0.1 * torch.rand(len(ytr), views, FEAT, generator=g)).clamp_min(0)
    return LowShotData("tiny", train, test, xtr, xte, list(range(BASE)), list(range(BASE, CLASSES)), aug)


def top1_by_hand(scores, data: LowShotData) -> dict:
    """Top-1 (%) recomputed with numpy from (M, C) scores: novel and all test images among all
    classes, novel test images among the novel classes only."""
    s = np.asarray(torch.as_tensor(scores).float())
    y = data.test_y.numpy()
    pred = s.argmax(1)
    novel = y >= data.num_base
    pred_novel = s[:, data.num_base :].argmax(1) + data.num_base
    return {"novel": 100 * np.mean(pred[novel] == y[novel]), "all": 100 * np.mean(pred[y >= 0] == y[y >= 0]),
            "novel_only": 100 * np.mean(pred_novel[novel] == y[novel])}


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file that decodes (PIL checks it is a whole image)."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size
