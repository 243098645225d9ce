"""Backbone features computed once and cached on disk.

A cache entry is keyed by everything that changes the numbers: the backbone and a hash of
its weights, the preprocessing (image size included), the view (centre crop, or k random
crop + flip versions with a seed), and each image file's path, size and modification
time. Change any of them and the features are computed again. Every method, seed and shot
count then reuses the same features.

The backbone runs on an engine (``imprinting.engines``: the fastest exact one by default).
The float32 engines give PyTorch's features to within the engines' tolerance, so they share
entries, and the key is the one of the entries written before engines existed; a bf16 engine
(asked for only) has entries of its own. Each entry records the engine that computed it;
``last_engine`` names the one behind the features ``cached_features`` last returned.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from imprinting import distributed as dd
from imprinting.backbones import Backbone, Preprocess
from imprinting.cache import cache_dir  # noqa: F401  (also this module's API)
from imprinting.data import ImageSet
from imprinting.engines import TorchEngine, frozen_engine, pipeline, record, resolve_precision
from imprinting.files import atomic_write
from imprinting.spec import fingerprint

# The engine (its ``describe()``) that computed the features ``cached_features`` last
# returned, read from the cache entry when they came from it: for result headers.
last_engine: str | None = None


@dataclass(frozen=True)
class View:
    """Which version of each image: the centre crop (``augment=0``) or ``augment`` random
    crop + flip versions drawn with ``seed``."""

    augment: int = 0
    seed: int = 0

    def describe(self) -> str:
        return "center" if not self.augment else f"augment{self.augment}-seed{self.seed}"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (``imprinting.spec.fingerprint``): the same
    weights, the same features."""
    return fingerprint(module)[:16]


def cache_key(backbone: Backbone, pre: Preprocess, images: ImageSet, view: View, engine: str | None = None) -> str:
    """``engine``: the engine and precision, given only when they are not float32-exact
    (e.g. ``"openvino-bfloat16"``), so float32 entries keep the keys they always had."""
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
            **({"engine": engine} if engine else {}),
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
    num_workers: int | None = None,
    progress: bool = True,
    engine: str | None = None,
    precision: str | None = None,
    cache: str | os.PathLike | None = None,
) -> torch.Tensor:
    """Backbone features, (N, F) for the centre view or (N, k, F) for k augmented views.

    The backbone runs on ``engine`` (``imprinting.engines.frozen_engine``; ``None``: the
    process default, "auto" unless set), which keeps its graphs and choices in the cache
    folder ``cache`` (default ``cache_dir()``). Images are decoded by ``num_workers`` threads
    (``None``: one per core; 0: in this thread), taking turns with a CPU engine
    (``imprinting.engines.pipeline``); augmented views draw their crops and flips from a
    generator seeded per image, so any batch size or thread count gives the same views.

    Under torchrun (see ``imprinting.distributed``) each rank computes a contiguous share of
    whole batches, in PyTorch on its GPU under NCCL, and every rank returns all the features,
    gathered in order: the batches are those one process would make, so the features are too.
    """
    dd.init_from_env()
    world, rank = dd.world_size(), dd.rank()
    start, end = dd.shard_range(len(images), rank, world, align=batch_size)
    desc = f"features {images.name} ({view.describe()})" + (f" rank 0 of {world}" if world > 1 else "")
    run = _engine(backbone, pre, engine, precision, dd.device() if world > 1 else None, cache)
    local = _compute(run, backbone, pre, images.paths[start:end], start, view, batch_size, num_workers,
                     progress and rank == 0, desc)
    return dd.gather_rows(local) if world > 1 else local


def _engine(backbone: Backbone, pre: Preprocess, engine, precision, device, cache=None):
    backbone.module.eval()
    if device is not None:  # a rank of torchrun: PyTorch on its device
        return TorchEngine(backbone.module, resolve_precision(precision), device=device)
    return frozen_engine(backbone.module, pre, engine, precision, cache=cache)


def _compute(engine, backbone, pre, paths, offset, view, batch_size, num_workers, progress, desc) -> torch.Tensor:
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress)
    if not view.augment:
        out = pipeline.center_features(engine, paths, pre, batch_size, num_workers, progress=bar.update)
    else:
        seed = view.seed * 1_000_003 + offset  # a seed per image: the same views whatever the batches or workers
        out = pipeline.seeded_view_features(engine, paths, pre, view.augment, lambda i: seed + i, batch_size,
                                            num_workers, progress=bar.update)
    bar.close()
    _note(engine.describe())
    return out


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
    if dd.init_from_env():
        dd.broadcast_module(backbone.module)  # random weights differ per process: rank 0's for all
    pre = pre or backbone.preprocess
    key = cache_key(backbone, pre, images, view, _inexact_engine(backbone, pre, kwargs, cache))
    safe_name = images.name.replace("/", "_")
    path = cache_dir(cache) / "features" / f"{backbone.name.replace(':', '_')}-{safe_name}-{view.describe()}-{key}.safetensors"
    feats = made_by = None
    if path.exists():
        try:
            with safe_open(str(path), "pt") as entry:
                feats, meta = entry.get_tensor("features"), entry.metadata() or {}
            made_by = json.loads(meta.get("entry", "{}")).get("engine")
        except Exception:  # a damaged cache entry is recomputed, never trusted
            feats = None
            if dd.is_main():
                path.unlink(missing_ok=True)
    if dd.all_ranks_agree(feats is not None):
        _note(made_by or "unknown (a cache entry from before engines were recorded)")
        return feats
    feats = compute_features(backbone, pre, images, view, progress=progress, cache=cache, **kwargs)
    if dd.is_main():
        # One metadata entry (safetensors writes several in a random order) with the engine and
        # precision only: the same engine writes the same bytes whatever its threads or version,
        # and a torchrun the single process's.
        meta = {"entry": json.dumps({"engine": (last_engine or "").split(" (")[0], "key": key}, sort_keys=True)}
        atomic_write(path, lambda tmp: save_file({"features": feats.contiguous()}, tmp, metadata=meta))
    dd.barrier()  # the entry is on disk before any rank goes on
    return feats


def _inexact_engine(backbone: Backbone, pre: Preprocess, kwargs: dict, cache) -> str | None:
    """``"<engine>-<precision>"`` when the features would not be float32-exact, else ``None``."""
    if resolve_precision(kwargs.get("precision")) == "float32":
        return None
    engine = _engine(backbone, pre, kwargs.get("engine"), kwargs.get("precision"), None, cache)
    return f"{engine.name}-{engine.precision}"


def _note(description: str) -> None:
    global last_engine
    last_engine = description
    record(description)
