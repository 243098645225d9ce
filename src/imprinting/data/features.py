"""Backbone features computed once and cached on disk.

A cache entry is keyed by everything that changes the numbers: the backbone and a hash of
its weights, the preprocessing (image size included), the view (centre crop, or k random
crop + flip versions with a seed), and each image file's path, size and modification
time. Change any of them and the features are computed again. Every method, seed and shot
count then reuses the same features.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from imprinting import distributed as dd
from imprinting.backbones import Backbone, Preprocess
from imprinting.data import ImageSet
from imprinting.data.images import load_image
from imprinting.data.transforms import eval_transform, image_mode, train_transform


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder: the argument, else $IMPRINTING_CACHE, else ~/.cache/imprinting."""
    return Path(path or os.environ.get("IMPRINTING_CACHE") or Path.home() / ".cache" / "imprinting")


@dataclass(frozen=True)
class View:
    """Which version of each image: the centre crop (``augment=0``) or ``augment`` random
    crop + flip versions drawn with ``seed``."""

    augment: int = 0
    seed: int = 0

    def describe(self) -> str:
        return "center" if not self.augment else f"augment{self.augment}-seed{self.seed}"


class _Images(Dataset):
    """Images ``offset .. offset + len(paths)`` of a set (the offset keeps each image's
    augmentation seed that of its place in the whole set, whichever rank computes it)."""

    def __init__(self, paths: list[Path], pre: Preprocess, view: View, offset: int = 0):
        self.paths = paths
        self.mode = image_mode(pre)
        self.view = view
        self.offset = offset
        self.transform = train_transform(pre) if view.augment else eval_transform(pre)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = load_image(self.paths[i], self.mode)
        if not self.view.augment:
            return self.transform(image)
        # A seed per image: the same views whatever the batch size or worker count.
        g = torch.random.fork_rng(devices=[])
        with g:
            torch.manual_seed(self.view.seed * 1_000_003 + self.offset + i)
            return torch.stack([self.transform(image) for _ in range(self.view.augment)])


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (``imprinting.spec.fingerprint``): the same
    weights, the same features."""
    from imprinting.spec import fingerprint

    return fingerprint(module)[:16]


def cache_key(backbone: Backbone, pre: Preprocess, images: ImageSet, view: View) -> str:
    files = []
    for p in images.paths:
        st = os.stat(p)
        files.append([str(p), st.st_size, st.st_mtime_ns])
    blob = json.dumps(
        {
            "backbone": backbone.name,
            # Named pretrained weights by name; anything else (random, trained here) by content.
            "weights": backbone.weights_id if backbone.pretrained else weights_fingerprint(backbone.module),
            "preprocess": pre.to_dict(),
            "view": view.describe(),
            "files": files,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def compute_features(
    backbone: Backbone,
    pre: Preprocess,
    images: ImageSet,
    view: View = View(),
    batch_size: int = 64,
    num_workers: int = 1,
    progress: bool = True,
) -> torch.Tensor:
    """Backbone features, (N, F) for the centre view or (N, k, F) for k augmented views.

    Under torchrun (see ``imprinting.distributed``) each rank computes a contiguous share of
    whole batches, on its GPU under NCCL, and every rank returns all the features, gathered
    in order: the batches are those one process would make, so the features are too.
    """
    dd.init_from_env()
    world, rank = dd.world_size(), dd.rank()
    start, end = dd.shard_range(len(images), rank, world, align=batch_size)
    desc = f"features {images.name} ({view.describe()})" + (f" rank 0 of {world}" if world > 1 else "")
    local = _compute(backbone, pre, images.paths[start:end], start, view, batch_size, num_workers,
                     progress and rank == 0, desc, dd.device() if world > 1 else None)
    return dd.gather_rows(local) if world > 1 else local


def _compute(backbone, pre, paths, offset, view, batch_size, num_workers, progress, desc, device) -> torch.Tensor:
    # Outside inference mode: converting parameters inside it would make them unusable for training.
    module = backbone.module.eval().to(memory_format=torch.channels_last)
    home = next(module.parameters(), torch.empty(0)).device
    device = device or home
    loader = DataLoader(_Images(paths, pre, view, offset), batch_size=batch_size, num_workers=num_workers)
    out = []
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress)
    if device != home:
        module.to(device)
    try:
        with torch.no_grad():
            for batch in loader:
                shape = batch.shape
                x = batch.reshape(-1, *shape[-3:]).to(device).contiguous(memory_format=torch.channels_last)
                out.append(module(x).float().reshape(*shape[:-3], -1).cpu())
                bar.update(shape[0])
    finally:
        if device != home:
            module.to(home)
    bar.close()
    if not out:  # an empty share (more ranks than batches)
        return torch.empty(0)
    return torch.cat(out)


def cached_features(
    backbone: Backbone,
    images: ImageSet,
    pre: Preprocess | None = None,
    view: View = View(),
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    **kwargs,
) -> torch.Tensor:
    """``compute_features`` through the on-disk cache (see the module docstring).

    Under torchrun the backbone first takes rank 0's weights on every rank (random ones
    differ between processes), the ranks share the work (``compute_features``) and rank 0
    alone writes the cache file, the same file one process would write; the entry is used
    only when every rank can read it (put the cache on a shared file system for several
    machines, or every run computes the features again).
    """
    from imprinting.files import atomic_write

    if dd.init_from_env():
        dd.broadcast_module(backbone.module)  # random weights differ per process: rank 0's for all
    pre = pre or backbone.preprocess
    key = cache_key(backbone, pre, images, view)
    safe_name = images.name.replace("/", "_")
    path = cache_dir(cache) / "features" / f"{backbone.name.replace(':', '_')}-{safe_name}-{view.describe()}-{key}.safetensors"
    feats = None
    if path.exists():
        try:
            feats = load_file(str(path))["features"]
        except Exception:  # a damaged cache entry is recomputed, never trusted
            if dd.is_main():
                path.unlink(missing_ok=True)
    if dd.all_ranks_agree(feats is not None):
        return feats
    feats = compute_features(backbone, pre, images, view, progress=progress, **kwargs)
    if dd.is_main():
        atomic_write(path, lambda tmp: save_file({"features": feats.contiguous()}, tmp, metadata={"key": key}))
    dd.barrier()  # the entry is on disk before any rank goes on
    return feats
