"""The classes file, ``classes.npz``: a model's class table on disk (numpy only, no torch).

It is what ``imprint export`` writes for a device, what the lite runtime saves after
teaching classes, and what ``imprinting.export.import_classes`` reads back into PyTorch.
A plain (uncompressed) numpy archive, loaded with ``allow_pickle=False``:

=========  ==============  ===============================================================
key        dtype, shape    meaning
=========  ==============  ===============================================================
header     uint8 (n,)      UTF-8 JSON: ``format`` ("imprinting-classes"), ``version``,
                           ``class_names``, ``dim``, ``per_class_scale``, ``initial_scale``,
                           ``unknown_threshold`` (null or a cosine), ``embedder_id``
weights    float32 (C, D)  the class vectors as the classifier stores them (normalized at use)
scale      float32 (1,)    the cosine classifier's scale s, or (C,) with ``per_class_scale``
sums       float64 (C, D)  per class, the sum of its examples' L2-normalized embeddings
counts     int64 (C,)      examples behind each sum; 0 = a trained base class whose weight
                           is its trained vector (it takes no examples)
head_*     float64         only with a closed-form head (header ``head``: its kind and
                           choices, ``imprinting.heads.WhitenedHead``): ``head_centre`` (D,),
                           ``head_covariance`` (D, D)
=========  ==============  ===============================================================

``ClassesData`` is the file's content: a ``ClassTable`` (``table()``, ``from_table``) plus
the header fields that are not class state. Files are written atomically (temporary file,
fsync, rename), so a crash mid-save leaves the old file intact.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imprinting.classes import ClassTable
from imprinting.errors import ExportFormatError
from imprinting.files import atomic_write

CLASSES_FORMAT = "imprinting-classes"
CLASSES_VERSION = 1
CLASSES = "classes.npz"

_KEYS = ("header", "weights", "scale", "sums", "counts")


@dataclass
class ClassesData:
    """The content of a classes file (see the module docstring)."""

    class_names: list[str]
    weights: np.ndarray  # float32 (C, D)
    scale: np.ndarray  # float32 (1,) or (C,)
    sums: np.ndarray  # float64 (C, D)
    counts: np.ndarray  # int64 (C,)
    dim: int
    per_class_scale: bool = False
    initial_scale: float = 10.0
    unknown_threshold: float | None = None
    embedder_id: str | None = None
    extra: dict = field(default_factory=dict)
    head: object | None = None  # imprinting.heads.WhitenedHead, or None: the paper's s * cos

    def __post_init__(self) -> None:
        self.class_names = [str(n) for n in self.class_names]
        self.weights = np.asarray(self.weights, dtype=np.float32).reshape(-1, self.dim)
        self.scale = np.asarray(self.scale, dtype=np.float32).reshape(-1)
        self.sums = np.asarray(self.sums, dtype=np.float64).reshape(-1, self.dim)
        self.counts = np.asarray(self.counts, dtype=np.int64).reshape(-1)
        self.validate()

    def validate(self, where: str = "classes") -> None:
        c = len(self.class_names)
        problems = []
        if len(set(self.class_names)) != c:
            problems.append("class names are not unique")
        if self.weights.shape[0] != c or self.sums.shape[0] != c or self.counts.shape[0] != c:
            problems.append(
                f"{c} names but weights {self.weights.shape}, sums {self.sums.shape}, counts {self.counts.shape}"
            )
        want_scale = c if self.per_class_scale else 1
        if self.scale.shape != (want_scale,):
            problems.append(f"scale has shape {self.scale.shape}, expected ({want_scale},)")
        if (self.counts < 0).any():
            problems.append("negative example counts")
        for name, arr in (("weights", self.weights), ("scale", self.scale), ("sums", self.sums)):
            if not np.isfinite(arr).all():
                problems.append(f"{name} has NaN or infinite values")
        if self.unknown_threshold is not None and not np.isfinite(self.unknown_threshold):
            problems.append("unknown_threshold is not finite")
        if problems:
            raise ExportFormatError(f"{where}: inconsistent classes ({'; '.join(problems)})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def table(self) -> ClassTable:
        """The classes as a ``ClassTable`` (copies)."""
        return ClassTable.from_arrays(self.class_names, self.weights, self.sums, self.counts, self.scale,
                                      self.per_class_scale, self.initial_scale, self.head)

    @classmethod
    def from_table(cls, table: ClassTable, unknown_threshold: float | None = None,
                   embedder_id: str | None = None, extra: dict | None = None) -> "ClassesData":
        return cls(list(table.names), table.weights.copy(), table.scale.copy(), table.sums.copy(),
                   table.counts.copy(), table.dim, table.per_class_scale, table.initial_scale,
                   None if unknown_threshold is None else float(unknown_threshold), embedder_id, dict(extra or {}),
                   table.head)

    def header(self) -> dict:
        return {
            "format": CLASSES_FORMAT,
            "version": CLASSES_VERSION,
            "class_names": self.class_names,
            "dim": self.dim,
            "per_class_scale": self.per_class_scale,
            "initial_scale": self.initial_scale,
            "unknown_threshold": self.unknown_threshold,
            "embedder_id": self.embedder_id,
            **self.extra,
            **({"head": self.head.header()} if self.head is not None else {}),
        }


def save_classes(data: ClassesData, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` (a .npz file), atomically."""
    data.validate(str(path))
    header = json.dumps(data.header(), ensure_ascii=False).encode("utf-8")
    arrays = {
        "header": np.frombuffer(header, dtype=np.uint8),
        "weights": np.ascontiguousarray(data.weights, dtype=np.float32),
        "scale": np.ascontiguousarray(data.scale, dtype=np.float32),
        "sums": np.ascontiguousarray(data.sums, dtype=np.float64),
        "counts": np.ascontiguousarray(data.counts, dtype=np.int64),
    }
    if data.head is not None:
        arrays.update({f"head_{k}": np.ascontiguousarray(v, np.float64) for k, v in data.head.arrays().items()})

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays)

    atomic_write(path, write)


def load_classes(path: str | os.PathLike) -> ClassesData:
    """Read a classes file; errors name the file and the problem."""
    path = Path(path)
    if path.is_dir():
        path = path / CLASSES
    if not path.is_file():
        raise ExportFormatError(f"{path}: no such classes file")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ExportFormatError(f"{path}: not an imprinting classes file (a single array, not an archive)")
        with npz:
            missing = [k for k in _KEYS if k not in npz.files]
            if "header" in missing:
                raise ExportFormatError(f"{path}: not an imprinting classes file (no header)")
            header_bytes = npz["header"]
            if header_bytes.dtype != np.uint8:
                raise ExportFormatError(f"{path}: not an imprinting classes file (header is {header_bytes.dtype})")
            try:
                header = json.loads(header_bytes.tobytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ExportFormatError(f"{path}: damaged header ({exc})") from None
            if not isinstance(header, dict) or header.get("format") != CLASSES_FORMAT:
                raise ExportFormatError(f"{path}: not an imprinting classes file (no '{CLASSES_FORMAT}' header)")
            version = header.get("version")
            if not isinstance(version, int) or version < 1:
                raise ExportFormatError(f"{path}: damaged header (version {version!r})")
            if version > CLASSES_VERSION:
                raise ExportFormatError(
                    f"{path}: written by a newer version (classes format {version}, this reads "
                    f"{CLASSES_VERSION}); upgrade imprinting"
                )
            if missing:
                raise ExportFormatError(f"{path}: truncated classes file (missing {', '.join(missing)})")
            arrays = {k: npz[k] for k in _KEYS[1:]}
            head_arrays = {k[len("head_"):]: npz[k] for k in npz.files if k.startswith("head_")}
    except ExportFormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ExportFormatError(f"{path}: truncated or corrupt classes file ({exc.__class__.__name__}: {exc})") from None
    known = {"format", "version", "class_names", "dim", "per_class_scale", "initial_scale",
             "unknown_threshold", "embedder_id", "head"}
    try:
        names = header["class_names"]
        dim = int(header["dim"])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TypeError("class_names is not a list of strings")
        for key, want in (("weights", np.floating), ("scale", np.floating), ("sums", np.floating), ("counts", np.integer)):
            if not np.issubdtype(arrays[key].dtype, want):
                raise TypeError(f"{key} has dtype {arrays[key].dtype}")
        c = len(names)
        for key, shape in (("weights", (c, dim)), ("sums", (c, dim)), ("counts", (c,))):
            if arrays[key].shape != shape:
                raise TypeError(f"{key} has shape {arrays[key].shape}, expected {shape} for {c} classes")
        threshold = header.get("unknown_threshold")
        head = None
        if header.get("head") is not None:
            from imprinting.heads import WhitenedHead

            head = WhitenedHead.from_parts(header["head"], head_arrays)
            if head.dim != dim:
                raise TypeError(f"a {head.dim}-d head for {dim}-d classes")
        return ClassesData(
            class_names=names,
            weights=arrays["weights"],
            scale=arrays["scale"],
            sums=arrays["sums"],
            counts=arrays["counts"],
            dim=dim,
            per_class_scale=bool(header.get("per_class_scale", False)),
            initial_scale=float(header.get("initial_scale", 10.0)),
            unknown_threshold=None if threshold is None else float(threshold),
            embedder_id=header.get("embedder_id"),
            extra={k: v for k, v in header.items() if k not in known},
            head=head,
        )
    except ExportFormatError as exc:
        raise ExportFormatError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportFormatError(f"{path}: damaged classes file ({exc.__class__.__name__}: {exc})") from None
