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

A folder may come from anywhere, so every field the runtime uses is checked when it is read,
and a bad one is an ``ExportFormatError`` naming the file and the field (never a KeyError at
load or an engine's error at the first prediction): ``embedding_dim`` a positive integer,
``files`` an object whose every entry is a plain relative name that stays inside the folder
(no ``..``, no absolute path, no symlink leading out: the runtime reads these files and
``LiteModel.save`` writes the classes file), ``embedder_id`` a string or absent; the recipe's
sizes integers in [1, ``MAX_IMAGE_SIZE``], its interpolation one Pillow knows, its mean and std
finite numbers, one per channel, the std positive.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

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

# The largest image_size / resize_size a recipe may ask for: 16x the usual 256, far above any
# embedder's input, and small enough that one resized image stays a few hundred MB at most.
MAX_IMAGE_SIZE = 4096


def _is_int(value) -> bool:
    """A JSON integer (``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite JSON number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    if not _is_int(version) or version < 1:
        raise ExportFormatError(f"{path}: damaged manifest (version {version!r})")
    if version > EXPORT_VERSION:
        raise ExportFormatError(
            f"{path}: written by a newer version (export format {version}, this reads {EXPORT_VERSION}); upgrade imprinting"
        )
    dim = data.get("embedding_dim")
    if not _is_int(dim) or dim < 1:
        raise ExportFormatError(f"{path}: damaged manifest (embedding_dim is {dim!r}, not a positive integer)")
    files = data.get("files")
    if not isinstance(files, dict):
        raise ExportFormatError(f"{path}: damaged manifest (files is {files!r}, not an object of file names)")
    for key in files:
        export_file(folder, data, key)
    embedder_id = data.get("embedder_id")
    if embedder_id is not None and not isinstance(embedder_id, str):
        raise ExportFormatError(f"{path}: damaged manifest (embedder_id is {embedder_id!r}, not a string)")
    return data


def export_file(folder: str | os.PathLike, manifest: dict, key: str, default: str | None = None) -> Path:
    """The path of the manifest's ``files[key]`` (or ``default`` when the entry is absent),
    refused unless it is a plain relative name that resolves, symlinks followed, to a path
    inside ``folder``."""
    folder = Path(folder)
    name = manifest["files"].get(key, default)
    field = f"files.{key}"
    where = folder / MANIFEST
    if not isinstance(name, str):
        raise ExportFormatError(f"{where}: damaged manifest ({field} is {name!r}, not a file name)")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    escapes = posix.is_absolute() or windows.anchor or ".." in posix.parts or ".." in windows.parts
    if not name or "\0" in name or escapes:
        raise ExportFormatError(f"{where}: damaged manifest ({field} is {name!r}, not a file name inside the folder)")
    try:
        root, target = folder.resolve(), (folder / name).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ExportFormatError(f"{where}: {field} is {name!r}, which cannot be resolved ({exc})") from None
    if root not in target.parents:
        raise ExportFormatError(f"{where}: {field} is {name!r}, which leads out of the export folder (to {target})")
    return folder / name


def read_preprocess(folder: str | os.PathLike) -> dict:
    """The preprocessing recipe, with every field checked (see the module docstring)."""
    # light module: Pillow comes with preprocess, imported here where images are, not by every reader of the format
    from imprinting.lite.preprocess import PIL_INTERPOLATION

    path = Path(folder) / PREPROCESS
    data = read_json(path, "preprocessing recipe")

    def damaged(problem: str) -> ExportFormatError:
        return ExportFormatError(f"{path}: damaged preprocessing recipe ({problem})")

    for key in ("image_size", "resize_size"):
        value = data.get(key)
        if not _is_int(value) or not 1 <= value <= MAX_IMAGE_SIZE:
            raise damaged(f"{key} is {value!r}, not an integer in [1, {MAX_IMAGE_SIZE}]")
    in_chans = data.get("in_chans", 3)
    if not _is_int(in_chans) or in_chans not in (1, 3):
        raise damaged(f"in_chans is {in_chans!r}, not 1 or 3")
    interpolation = data.get("interpolation", "bilinear")
    if not isinstance(interpolation, str) or interpolation not in PIL_INTERPOLATION:
        raise damaged(f"interpolation is {interpolation!r}, not one of {', '.join(PIL_INTERPOLATION)}")
    for key in ("mean", "std"):
        values = data.get(key)
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise damaged(f"{key} is {values!r}, not a list of finite numbers")
        if len(values) != in_chans:
            raise damaged(f"{key} has {len(values)} values: mean/std do not fit {in_chans} channels")
    if min(data["std"]) <= 0:
        raise damaged(f"std is {data['std']!r}: every std must be positive")
    return {
        "image_size": data["image_size"],
        "resize_size": data["resize_size"],
        "mean": [float(v) for v in data["mean"]],
        "std": [float(v) for v in data["std"]],
        "in_chans": in_chans,
        "interpolation": interpolation,
    }
