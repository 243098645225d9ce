"""One-file checkpoints: configuration, weights, class names and imprinting sums.

The file is a safetensors file (tensors plus a JSON header), so loading never unpickles
anything. Writes are atomic: the new file is written beside the old one, flushed to disk
and renamed over it, so a crash mid-save leaves the old file intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from imprinting.files import atomic_write  # noqa: F401  (part of this module's API)
from imprinting.model import ImprintModel, create_model

FORMAT = "imprinting-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt, or not one of ours."""


def save(model: ImprintModel, path: str | os.PathLike) -> None:
    """Write ``model`` to one file, atomically."""
    tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tensors["sums"] = model.sums.sums.clone()
    tensors["counts"] = model.sums.counts.clone()
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "config": json.dumps(model.config),
        "class_names": json.dumps(model.class_names),
        "unknown_threshold": json.dumps(model.unknown_threshold),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's header (format, config, class names) without loading the weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable imprinting model file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an imprinting model file (no '{FORMAT}' header)")
    if int(meta.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path}: written by a newer version (format {meta['version']}); upgrade imprinting")
    try:
        return {
            "config": json.loads(meta["config"]),
            "class_names": json.loads(meta["class_names"]),
            "unknown_threshold": json.loads(meta.get("unknown_threshold", "null")),
        }
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged header ({exc})") from None


def load(path: str | os.PathLike) -> ImprintModel:
    """Load a model saved by ``save``; errors name the file and the problem."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt model file ({exc})") from None
    config = meta["config"]
    names = meta["class_names"]
    pre = config["preprocess"]
    model = create_model(
        backbone=config["backbone"],
        dim=config["dim"],
        pretrained=False,  # the weights come from the file
        classifier=config["classifier"],
        class_names=names,
        scale=config["scale"],
        learn_scale=config["learn_scale"],
        per_class_scale=config["per_class_scale"],
        image_size=pre["image_size"],
        unknown_threshold=meta["unknown_threshold"],
    )
    model.config = config
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
        model.sums.load(tensors["sums"], tensors["counts"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the recorded configuration ({exc})") from None
    return model.eval()
