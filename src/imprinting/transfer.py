"""Transfer learning by imprinting (paper Table 3) from an ImageNet backbone.

The backbone's pooled features, L2-normalized, are the embedding (no fully connected
layer, no training). The classifier is replaced by one weight per new class: imprinted
from n training images (the normalized mean of their embeddings), imprinted from 5 random
crop + flip versions of each (Imprinting+Aug), or Xavier-uniform random (Rand).
Top-1 accuracy is measured on the data set's official test split, over several nested
draws of the n training images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imprinting.backbones import create_backbone
from imprinting.data import ImageSet
from imprinting.data.features import View, cached_features
from imprinting.data.splits import shot_draws, take
from imprinting.imprint import imprint_weights, random_weights


def top1(weights: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (%) of the cosine classifier with class vectors ``weights``."""
    pred = (embeddings @ F.normalize(weights, dim=1).t()).argmax(dim=1)
    return 100.0 * (pred == labels).float().mean().item()


@dataclass
class TransferData:
    train: ImageSet
    test: ImageSet
    train_emb: torch.Tensor  # (N, D) centre crops, unit length
    train_aug: torch.Tensor  # (N, k, D) augmented views, unit length
    test_emb: torch.Tensor
    seconds_features: float


def prepare(
    train: ImageSet,
    test: ImageSet,
    backbone: str = "efficientnet_lite0",
    image_size: int | None = None,
    augment: int = 5,
    seed: int = 0,
    cache: str | None = None,
    progress: bool = True,
) -> TransferData:
    """Backbone features of both splits (cached), L2-normalized."""
    bb = create_backbone(backbone, pretrained=True)
    pre = bb.preprocess.at_size(image_size)
    t0 = time.perf_counter()
    f_train = cached_features(bb, train, pre, View(), cache, progress)
    f_aug = cached_features(bb, train, pre, View(augment, seed), cache, progress) if augment else None
    f_test = cached_features(bb, test, pre, View(), cache, progress)
    elapsed = time.perf_counter() - t0
    return TransferData(
        train,
        test,
        F.normalize(f_train, dim=-1),
        F.normalize(f_aug, dim=-1) if f_aug is not None else None,
        F.normalize(f_test, dim=-1),
        elapsed,
    )


def run(data: TransferData, shots=(1, 5, 10), draws: int = 5, seed: int = 0) -> list[dict]:
    """Rand, Imprinting and Imprinting+Aug at each n: mean and std of top-1 over draws."""
    num_classes = len(data.train.class_names)
    classes = sorted(set(data.train.labels))
    train_labels = torch.tensor(data.train.labels)
    test_labels = torch.tensor(data.test.labels)
    draw_perms = shot_draws(data.train.labels, classes, draws=draws, seed=seed)
    rows = []
    for n in shots:
        acc: dict[str, list[float]] = {"Rand-noFT": [], "Imprinting": []}
        if data.train_aug is not None:
            acc["Imprinting+Aug"] = []
        seconds = []
        for d, perm in enumerate(draw_perms):
            idx = torch.tensor(take(perm, n))
            g = torch.Generator().manual_seed(seed * 1000 + d)
            acc["Rand-noFT"].append(top1(random_weights(num_classes, data.test_emb.shape[1], g), data.test_emb, test_labels))
            t0 = time.perf_counter()
            w = imprint_weights(data.train_emb[idx], train_labels[idx], num_classes)
            seconds.append(time.perf_counter() - t0)
            acc["Imprinting"].append(top1(w, data.test_emb, test_labels))
            if data.train_aug is not None:
                views = data.train_aug[idx]  # (m, k, D)
                k = views.shape[1]
                w_aug = imprint_weights(views.reshape(-1, views.shape[-1]), train_labels[idx].repeat_interleave(k), num_classes)
                acc["Imprinting+Aug"].append(top1(w_aug, data.test_emb, test_labels))
        for method, values in acc.items():
            rows.append(
                {
                    "method": method,
                    "n": n,
                    "top1_mean": round(float(np.mean(values)), 2),
                    "top1_std": round(float(np.std(values)), 2),
                    "draws": len(values),
                    "imprint_us_per_class": round(1e6 * float(np.mean(seconds)) / len(classes), 2)
                    if method == "Imprinting"
                    else "",
                }
            )
    return rows


def time_end_to_end(model, data: ImageSet, n: int, classes: int = 5) -> dict:
    """Seconds to teach a class from n JPEG files (decode + forward + imprint), per class,
    and the plain forward time of the same images, measured on ``classes`` classes."""
    by_class: dict[int, list] = {}
    for p, y in zip(data.paths, data.labels):
        by_class.setdefault(y, []).append(p)
    picked = [files[:n] for _, files in sorted(by_class.items())[:classes]]
    model.embed_images(picked[0])  # warm-up
    t0 = time.perf_counter()
    for i, files in enumerate(picked):
        model.imprint(f"timing_{i}", files)
    per_class = (time.perf_counter() - t0) / len(picked)
    pre = model.preprocess
    from imprinting.data.transforms import eval_transform

    tf = eval_transform(pre)
    tensors = [torch.stack([tf(img) for img in model.load_images(files)]) for files in picked]
    with torch.inference_mode():
        t0 = time.perf_counter()
        for x in tensors:
            model.embed(x)
        forward = (time.perf_counter() - t0) / len(picked)
    return {"n": n, "seconds_per_class": per_class, "forward_seconds_per_class": forward}
