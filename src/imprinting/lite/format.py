"""The on-disk formats shared by the exporter (PyTorch side) and the lite runtime.

numpy only: this module is imported on devices without PyTorch.

An export folder holds::

    manifest.json       what is in the folder: format, version, files, embedding size,
                        the embedder's fingerprint, the backbone and its configuration
    preprocess.json     the image recipe: resize the short side, centre crop, /255, normalize
    embedder.onnx       image (N, C, H, W) float32 -> L2-normalized embedding (N, D)
    model.onnx          image -> logits (N, classes) with the classes at export time baked in
    classes.npz         the classes: names, vectors, scale, per-class sums (see below)
    embedder.int8.onnx  optional int8 (dynamic quantization) versions of the two graphs
    model.int8.onnx

``classes.npz`` is the classes file (format and reader: ``imprinting.classes_file``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from imprinting.classes import normalize_rows  # noqa: F401  (re-exported)
from imprinting.classes_file import (  # noqa: F401  (re-exported: the export folder holds one)
    CLASSES,
    CLASSES_FORMAT,
    CLASSES_VERSION,
    ClassesData,
    load_classes,
    save_classes,
)
from imprinting.errors import ExportFormatError  # noqa: F401  (re-exported)
from imprinting.files import atomic_write

EXPORT_FORMAT = "imprinting-lite-export"
EXPORT_VERSION = 1

MANIFEST = "manifest.json"
PREPROCESS = "preprocess.json"
EMBEDDER = "embedder.onnx"
MODEL = "model.onnx"
EMBEDDER_INT8 = "embedder.int8.onnx"
MODEL_INT8 = "model.int8.onnx"

def write_json(path: str | os.PathLike, data: dict) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ExportFormatError(f"{path}: no such file; is {path.parent} a folder written by `imprint export`?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        raise ExportFormatError(f"{path}: damaged {what} ({exc})") from None
    if not isinstance(data, dict):
        raise ExportFormatError(f"{path}: damaged {what} (not a JSON object)")
    return data


def read_manifest(folder: str | os.PathLike) -> dict:
    """The export's manifest, checked for format and version."""
    path = Path(folder) / MANIFEST
    data = read_json(path, "manifest")
    if data.get("format") != EXPORT_FORMAT:
        raise ExportFormatError(f"{path}: not an imprinting export (no '{EXPORT_FORMAT}' format)")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise ExportFormatError(f"{path}: damaged manifest (version {version!r})")
    if version > EXPORT_VERSION:
        raise ExportFormatError(
            f"{path}: written by a newer version (export format {version}, this reads {EXPORT_VERSION}); upgrade imprinting"
        )
    return data


def read_preprocess(folder: str | os.PathLike) -> dict:
    """The preprocessing recipe, with every field checked."""
    path = Path(folder) / PREPROCESS
    data = read_json(path, "preprocessing recipe")
    try:
        in_chans = int(data.get("in_chans", 3))
        recipe = {
            "image_size": int(data["image_size"]),
            "resize_size": int(data["resize_size"]),
            "mean": [float(v) for v in data["mean"]],
            "std": [float(v) for v in data["std"]],
            "in_chans": in_chans,
            "interpolation": str(data.get("interpolation", "bilinear")),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportFormatError(f"{path}: damaged preprocessing recipe ({exc.__class__.__name__}: {exc})") from None
    if len(recipe["mean"]) != in_chans or len(recipe["std"]) != in_chans or in_chans not in (1, 3):
        raise ExportFormatError(f"{path}: damaged preprocessing recipe (mean/std do not fit {in_chans} channels)")
    if recipe["image_size"] < 1 or recipe["resize_size"] < 1 or min(recipe["std"]) <= 0:
        raise ExportFormatError(f"{path}: damaged preprocessing recipe (sizes and std must be positive)")
    return recipe
