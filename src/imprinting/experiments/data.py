"""Data preparation for the experiments: each data set's standard splits, the base/novel
split, cached backbone features (``LowShotData``), and the decoded images that end-to-end
fine-tuning trains on.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
from torch import nn

from imprinting.backbones import Backbone, create_backbone
from imprinting.build import create_model
from imprinting.data import ImageSet, data_root
from imprinting.data.cub import read_cub
from imprinting.data.features import View, cached_features
from imprinting.data.flowers import read_flowers102
from imprinting.data.inaturalist import read_inaturalist
from imprinting.data.omniglot import omniglot_train_test, read_omniglot
from imprinting.data.splits import base_novel_split
from imprinting.protocol import LowShotData
from imprinting.train import TensorImageDataset, TrainConfig, train

DATASETS = ("cub", "flowers102", "omniglot", "inaturalist")


def omniglot_config(epochs: int, seed: int = 0, lr: float = 1e-3) -> TrainConfig:
    """Training on Omniglot (the ConvNet from scratch, and its fine-tuning): Adam, batch 128,
    one learning rate for every layer."""
    return TrainConfig(epochs=epochs, optimizer="adam", lr=lr, head_lr_mult=1.0, batch_size=128, seed=seed)


def read_splits(dataset: str, root=None) -> tuple[ImageSet, ImageSet, str]:
    """(train, test, base/novel rule) in each data set's standard layout.

    Flowers-102: the official train and val splits together are the training set (20
    images per class, so that n = 20 is possible); the official test split is the test set.
    """
    root = data_root(root)
    if dataset == "cub":
        return read_cub(root, "train"), read_cub(root, "test"), "cub"
    if dataset == "flowers102":
        tr, va = read_flowers102(root, "train"), read_flowers102(root, "val")
        train = ImageSet("flowers102/trainval", tr.paths + va.paths, tr.labels + va.labels, tr.class_names,
                         {"split": "train"})
        return train, read_flowers102(root, "test"), "flowers102"
    if dataset == "omniglot":
        train, test = omniglot_train_test(read_omniglot(root, "all"))
        return train, test, "omniglot"
    if dataset == "inaturalist":
        return read_inaturalist(root, "train"), read_inaturalist(root, "val"), "inaturalist"
    raise ValueError(f"unknown data set {dataset!r}; choose from {', '.join(DATASETS)}")


def limit_classes(train: ImageSet, test: ImageSet, base: list[int], novel: list[int], limit: int | None):
    """Keep the first ``limit`` base and novel classes (tiny runs for tests and smoke checks)."""
    if not limit:
        return train, test, base, novel
    base, novel = base[:limit], novel[:limit]
    keep = set(base) | set(novel)
    pick = lambda s: s.subset([i for i, y in enumerate(s.labels) if y in keep], f"{s.name}-{limit}x2")  # noqa: E731
    return pick(train), pick(test), base, novel


def prepare(dataset: str, root=None, backbone: str = "efficientnet_lite0", image_size: int | None = None,
            augment: int = 5, seed: int = 0, cache=None, progress: bool = True,
            backbone_obj=None, limit: int | None = None) -> LowShotData:
    """Read a data set, split its classes, and compute (or load) cached backbone features.

    ``limit`` keeps only the first ``limit`` base and ``limit`` novel classes.
    """
    train, test, rule = read_splits(dataset, root)
    base, novel = base_novel_split(train, rule)
    train, test, base, novel = limit_classes(train, test, base, novel, limit)
    bb = backbone_obj or create_backbone(backbone, pretrained=True)
    pre = bb.preprocess.at_size(image_size)
    train_feats = cached_features(bb, train, pre, View(), cache, progress)
    aug = cached_features(bb, train, pre, View(augment, seed), cache, progress) if augment else None
    test_feats = cached_features(bb, test, pre, View(), cache, progress)
    return LowShotData(dataset, train, test, train_feats, test_feats, base, novel, aug)


def prepare_omniglot(root=None, dim: int = 64, cfg: TrainConfig | None = None, cache=None,
                     progress: bool = True, seed: int = 0, limit: int | None = None):
    """Omniglot: the small ConvNet trained from scratch, end to end, on the background
    characters; then its (frozen) backbone features feed every method.

    Returns ``(data, model, train_pixels, test_pixels, history)``: the trained full model and
    the preprocessed images are for end-to-end fine-tuning.
    """
    train_set, test_set, rule = read_splits("omniglot", root)
    base, novel = base_novel_split(train_set, rule)
    train_set, test_set, base, novel = limit_classes(train_set, test_set, base, novel, limit)
    cfg = cfg or omniglot_config(10, seed)
    torch.manual_seed(seed)
    model = create_model("conv4", pretrained=False, dim=dim, class_names=[train_set.class_names[c] for c in base])
    train_px = cached_pixels(train_set, model.preprocess, cache, progress)
    test_px = cached_pixels(test_set, model.preprocess, cache, progress)
    tmp = LowShotData("omniglot", train_set, test_set, train_px.flatten(1)[:, :1], test_px.flatten(1)[:, :1], base, novel)
    idx = tmp.base_train_idx
    history = train(model, TensorImageDataset(train_px[idx], tmp.train_y[idx]), cfg, progress=progress)
    with torch.no_grad():
        feats = [torch.cat([model.embedder.forward_features(x[i : i + 1024]) for i in range(0, len(x), 1024)])
                 for x in (train_px, test_px)]
    data = LowShotData("omniglot", train_set, test_set, feats[0], feats[1], base, novel)
    return data, model, train_px, test_px, history


def cached_pixels(images: ImageSet, pre, cache=None, progress: bool = True) -> torch.Tensor:
    """The decoded, resized, normalized images (N, C, H, W) of ``pre`` (its centre crop),
    through the feature cache like any features: decoded once, then read back."""
    pixels = Backbone("pixels", nn.Flatten(), pre.in_chans * pre.image_size**2, pre, False, "pixels")
    shape = (-1, pre.in_chans, pre.image_size, pre.image_size)
    return cached_features(pixels, images, pre, View(), cache, progress).reshape(shape)


def training_square(pre):
    """What end-to-end training keeps of each image: resized as for testing (short side
    ``pre.resize_size``), then the centre square of side ``s``: the largest ``s`` up to the
    resize with ``s - pre.image_size`` a multiple of 4 (e.g. 180 for a 160 crop resized to 183).
    Random crops of ``pre.image_size`` come from it; with that multiple of 4, the centre crop of
    the square is, to the pixel, the test-time centre crop (both round half offsets alike)."""
    c = pre.image_size
    return replace(pre, image_size=c + 4 * ((pre.resize_size - c) // 4))


def check_memory(images: int, pre) -> None:
    """End-to-end fine-tuning holds every image in memory (float32): refuse what cannot fit."""
    need = images * pre.in_chans * pre.image_size**2 * 4
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 3 * need > total:  # the images, a copy while caching, and the training subset
        raise MemoryError(f"end-to-end fine-tuning holds the {images} images in memory at {pre.image_size} px: "
                          f"{need / 2**30:.1f} GiB, x3 at peak, and this machine has {total / 2**30:.1f} GiB; "
                          "use a smaller --image-size or --limit-classes")


def describe(data: LowShotData, root, backbone: str, image_size,
              use: str = "frozen, features cached") -> str:
    return (f"{data.name} at {data_root(root)}: {len(data.train)} train / {len(data.test)} test images, "
            f"{len(data.base)} base + {len(data.novel)} novel classes; backbone {backbone} "
            f"(ImageNet, {use}), image size {image_size or 'default'}")
