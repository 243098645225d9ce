"""One-file checkpoints: the model spec, weights, class names and the class table's sums.

The file is a safetensors file (tensors plus a JSON header), so loading never unpickles
anything. Writes are atomic: the new file is written beside the old one, flushed to disk
and renamed over it, so a crash mid-save leaves the old file intact.

Layout (format 1, unchanged since the first release): header ``format``, ``version``,
``config`` (``ModelSpec.to_config``), ``class_names``, ``unknown_threshold``; tensors
``model.<state_dict key>`` (the classifier's rows are the class vectors), ``sums`` (C, D)
float64 and ``counts`` (C,) int64. Since 0.1 the header also has ``sha256``: a SHA-256 of the
other header entries and every tensor's name, dtype, shape and bytes (``digest``), checked at
load, so a flipped byte anywhere is a clear error; files without it (older ones) still load. The header
may also have ``conformal``: the calibration scores behind the unknown threshold and the
prediction sets (``imprinting.conformal``); a file without them predicts as before, without sets.
A calibrated model also keeps the examples those scores came from (header ``calibration``: their
class names, the rate asked for and whether the threshold follows them; tensor
``calibration.embeddings`` (M, D) float32), so the scores and the threshold follow later
changes of the classes (``imprinting.calibration_set``); without them they stay fixed.
NaN or infinite weights are refused at save and at load. A model with a closed-form head
(``imprinting.heads``) adds header ``head`` (its JSON) and tensors ``head.centre``,
``head.covariance`` (float64).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from imprinting.build import build_model
from imprinting.classes import ClassTable
from imprinting.calibration_set import CalibrationSet
from imprinting.conformal import ConformalScores
from imprinting.errors import UserError
from imprinting.files import atomic_write  # noqa: F401  (part of this module's API)
from imprinting.heads import WhitenedHead
from imprinting.model import ImprintModel
from imprinting.spec import ModelSpec

FORMAT = "imprinting-checkpoint"
VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, corrupt, or not one of ours."""


def save(model: ImprintModel, path: str | os.PathLike) -> None:
    """Write ``model`` to one file, atomically."""
    table = model.classes
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tensors["sums"] = torch.from_numpy(table.sums.copy())
    tensors["counts"] = torch.from_numpy(table.counts.copy())
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "config": json.dumps(model.spec.to_config()),
        "class_names": json.dumps(list(table.names)),
        "unknown_threshold": json.dumps(model.unknown_threshold),
    }
    if getattr(model, "conformal", None) is not None:  # calibration's scores (imprinting.conformal)
        metadata["conformal"] = json.dumps(model.conformal.to_json())
    if table.calibration is not None:  # the examples the scores follow the classes with (calibration_set)
        metadata["calibration"] = json.dumps({**table.calibration.header(), "threshold_follows": model.threshold_follows})
        tensors["calibration.embeddings"] = torch.from_numpy(table.calibration.embeddings.copy())
    if table.head is not None:
        metadata["head"] = json.dumps(table.head.header())
        tensors.update({f"head.{k}": torch.from_numpy(np.array(v, np.float64)) for k, v in table.head.arrays().items()})
    bad = non_finite(tensors)
    if bad:
        raise CheckpointError(f"{path}: not saved: tensor {bad!r} has NaN or infinite values")
    metadata["sha256"] = digest(metadata, tensors)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def digest(metadata: dict, tensors: dict) -> str:
    """SHA-256 of the header entries (but ``sha256``) and of each tensor's name, dtype,
    shape and bytes, in name order."""
    h = hashlib.sha256(json.dumps({k: v for k, v in metadata.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def non_finite(tensors: dict) -> str | None:
    """The name of the first floating-point tensor with a NaN or infinite value, or None."""
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            return name
    return None


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's header (spec, class names, threshold) without loading the weights."""
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
    try:
        version = int(meta.get("version", 0))
    except ValueError:
        raise CheckpointError(f"{path}: damaged header (version {meta.get('version')!r})") from None
    if version > VERSION:
        raise CheckpointError(f"{path}: written by a newer version (format {meta['version']}); upgrade imprinting")
    try:
        config = json.loads(meta["config"])
        names = json.loads(meta["class_names"])
        threshold = json.loads(meta.get("unknown_threshold", "null"))
        head = json.loads(meta["head"]) if "head" in meta else None
        conformal = ConformalScores.from_json(json.loads(meta["conformal"])) if "conformal" in meta else None
        calibration = json.loads(meta["calibration"]) if "calibration" in meta else None
        if calibration is not None and not isinstance(calibration, dict):
            raise ValueError("calibration is not an object")
    except (KeyError, json.JSONDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged header ({exc})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: damaged header (class_names is not a list of names)")
    if threshold is not None and not isinstance(threshold, (int, float)):
        raise CheckpointError(f"{path}: damaged header (unknown_threshold {threshold!r})")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: damaged header (config is not an object)")
    try:
        spec = ModelSpec.from_config(config)
    except UserError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: damaged header (config {exc.__class__.__name__}: {exc})") from None
    return {"spec": spec, "config": config, "class_names": names, "unknown_threshold": threshold, "raw": meta, "head": head,
            "conformal": conformal, "calibration": calibration}


def load(path: str | os.PathLike) -> ImprintModel:
    """Load a model saved by ``save``; errors name the file and the problem."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt model file ({exc})") from None
    expected = meta["raw"].get("sha256")
    if expected is not None and digest(meta["raw"], tensors) != expected:
        raise CheckpointError(f"{path}: corrupt model file (its checksum does not match its contents: "
                              "damaged on disk or in transfer)")
    bad = non_finite(tensors)
    if bad:
        raise CheckpointError(f"{path}: corrupt model file (tensor {bad!r} has NaN or infinite values)")
    names = meta["class_names"]
    try:
        head = None
        if meta["head"] is not None:
            head = WhitenedHead.from_parts(meta["head"], {k[len("head."):]: v.numpy() for k, v in tensors.items()
                                                           if k.startswith("head.")})
        model = build_model(meta["spec"], names, pretrained=False, unknown_threshold=meta["unknown_threshold"])
        model.conformal = meta["conformal"]
        kept = None
        if meta["calibration"] is not None:
            kept = CalibrationSet.from_stored(meta["calibration"], tensors["calibration.embeddings"].numpy())
            if problems := kept.problems(names, tensors["counts"].numpy(), model.embedder.dim):
                raise ValueError("; ".join(problems))
        model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
        clf = model.classifier
        scale = clf.scale_rows
        model.set_classes(ClassTable.from_arrays(
            names, clf.rows.detach().numpy(), tensors["sums"].numpy(), tensors["counts"].numpy(),
            scale.detach().numpy() if scale is not None else np.array([meta["spec"].scale]),
            bool(getattr(clf, "per_class_scale", False)), meta["spec"].scale, head, kept), copy=False)
        model.threshold_follows = kept is not None and bool(meta["calibration"].get("threshold_follows"))
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:  # UserError is a ValueError
        raise CheckpointError(f"{path}: weights do not fit the recorded configuration ({exc})") from None
    return model.eval()
