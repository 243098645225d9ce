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
calibration_embeddings     only in a calibrated file (header ``calibration``: the examples'
           float32 (M, D)  class names, the rate asked for, ``threshold_follows``): the examples
                           the calibration scores follow the classes with
                           (``imprinting.calibration_set``)
=========  ==============  ===============================================================

``ClassesData`` is the file's content: a ``ClassTable`` (``table()``, ``from_table``) plus
the header fields that are not class state. Files are written atomically (temporary file,
fsync, rename), so a crash mid-save leaves the old file intact.

A classes file may come from anywhere (a device, a download), so ``load_classes`` trusts
nothing in it: every array's dtype, shape and size are read from its ``.npy`` header and
checked against the header's class names and ``dim`` before the array is allocated, and no
array may declare more than ``MAX_EXPANSION`` times the file's size (the writer stores the
arrays uncompressed, so a genuine file's arrays are never bigger than the file; a 2 MiB
compressed archive declaring 2 GiB of zeros is refused in milliseconds). The values are then
checked by ``ClassesData.validate``, which ``save_classes`` runs too, so a file that saves
also loads: finite vectors and sums, no all-zero class vector, counts >= 0, every scale in
(0, ``MAX_SCALE``], an unknown threshold that is a cosine (in [-1, 1]) or null.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imprinting.calibration_set import CalibrationSet
from imprinting.classes import ClassTable
from imprinting.conformal import ConformalScores
from imprinting.errors import ExportFormatError
from imprinting.files import atomic_write
from imprinting.heads import WhitenedHead
from imprinting.npz_members import (
    EXPANSION_SLACK,
    MAX_EXPANSION,
    member_header,
    read_member,
)

CLASSES_FORMAT = "imprinting-classes"
CLASSES_VERSION = 1
CLASSES = "classes.npz"

_KEYS = ("header", "weights", "scale", "sums", "counts")

# The largest scale s a file may hold. s multiplies cosines in [-1, 1]: trained and calibrated
# values lie between 1 and 100 (``imprinting.calibration`` searches up to 1000); beyond 1e4
# the softmax is one-hot in float32 for any cosine gap over 0.01, so the value is damage.
MAX_SCALE = 1e4



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
    calibration: CalibrationSet | None = None  # the kept calibration examples, or None
    threshold_follows: bool = False  # the unknown threshold is the calibration's, recomputed after changes

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
        if not problems:  # the per-class checks need rows that line up with the names
            problems += self._value_problems()
        if problems:
            raise ExportFormatError(f"{where}: inconsistent classes ({'; '.join(problems)})")

    def _value_problems(self) -> list[str]:
        """What is wrong with the values (the shapes being right): each problem names the
        field and, for per-class values, the first few classes that have it."""
        problems = []
        weights_finite = np.isfinite(self.weights).all(axis=1)
        rows = {
            "weights has NaN or infinite values": ~weights_finite,
            "weights: the class vector is all zeros": weights_finite & ~(self.weights != 0).any(axis=1),
            "sums has NaN or infinite values": ~np.isfinite(self.sums).all(axis=1),
            "counts: negative example counts": self.counts < 0,
        }
        if self.per_class_scale:
            rows[f"scale is not a finite number in (0, {MAX_SCALE:g}]"] = ~_good_scale(self.scale)
        elif not _good_scale(self.scale).all():
            problems.append(f"scale is {float(self.scale[0]):g}, not a finite number in (0, {MAX_SCALE:g}]")
        for what, bad in rows.items():
            if bad.any():
                problems.append(f"{what} (class {_some(self.class_names, bad)})")
        if not _good_scale(np.array([self.initial_scale], np.float64)).all():
            problems.append(f"initial_scale is {self.initial_scale!r}, not a finite number in (0, {MAX_SCALE:g}]")
        t = self.unknown_threshold
        if t is not None and not (isinstance(t, (int, float)) and not isinstance(t, bool) and -1.0 <= t <= 1.0):
            problems.append(f"unknown_threshold is {t!r}, not a cosine in [-1, 1] or null")
        if self.calibration is not None:
            problems += self._calibration_problems()
        if "conformal" in self.extra:
            try:
                self.conformal  # noqa: B018  (parsed to be checked)
            except ValueError as exc:
                problems.append(str(exc))
        return problems

    def _calibration_problems(self) -> list[str]:
        """Kept calibration examples must fit the classes: no more for a class than it was taught from."""
        return self.calibration.problems(self.class_names, self.counts, self.dim)

    @property
    def conformal(self):
        """The calibration scores kept in the header's ``conformal`` (``imprinting.conformal``), or
        None (a file calibrated before they were kept: no prediction sets)."""
        data = self.extra.get("conformal")
        return None if data is None else ConformalScores.from_json(data)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def table(self) -> ClassTable:
        """The classes as a ``ClassTable`` (copies)."""
        return ClassTable.from_arrays(self.class_names, self.weights, self.sums, self.counts, self.scale,
                                      self.per_class_scale, self.initial_scale, self.head, self.calibration)

    @classmethod
    def from_table(cls, table: ClassTable, unknown_threshold: float | None = None,
                   embedder_id: str | None = None, extra: dict | None = None, conformal=None,
                   threshold_follows: bool = False) -> ClassesData:
        """``conformal``: calibration scores (``ConformalScores``) to keep in the header, or None
        (``extra``'s, if it has any, are kept). The table's kept calibration examples go with it."""
        extra = dict(extra or {})
        if conformal is not None:
            extra["conformal"] = conformal.to_json()
        return cls(list(table.names), table.weights.copy(), table.scale.copy(), table.sums.copy(),
                   table.counts.copy(), table.dim, table.per_class_scale, table.initial_scale,
                   None if unknown_threshold is None else float(unknown_threshold), embedder_id, extra, table.head,
                   table.calibration, bool(threshold_follows and table.calibration is not None))

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
            **({"calibration": {**self.calibration.header(), "threshold_follows": self.threshold_follows}}
               if self.calibration is not None else {}),
        }


def _good_scale(scale: np.ndarray) -> np.ndarray:
    """Which scales are usable: finite, positive, at most ``MAX_SCALE``."""
    scale = np.asarray(scale, np.float64)
    return np.isfinite(scale) & (scale > 0) & (scale <= MAX_SCALE)


def _some(names: list[str], mask: np.ndarray) -> str:
    """The names where ``mask`` is set, the first five quoted, for an error message."""
    index = np.flatnonzero(mask)
    shown = ", ".join(repr(names[i]) for i in index[:5])
    return shown + (f" and {len(index) - 5} more" if len(index) > 5 else "")


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
    if data.calibration is not None:
        arrays["calibration_embeddings"] = np.ascontiguousarray(data.calibration.embeddings, np.float32)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays)

    atomic_write(path, write)


def load_classes(path: str | os.PathLike, dim: int | None = None) -> ClassesData:
    """Read a classes file; errors name the file and the problem.

    ``dim``, when given (an export's embedding size), must be the file's. Nothing is
    allocated for an array before its declared dtype, shape and size have been checked
    (see the module docstring), so a damaged or hostile file costs no memory to refuse.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CLASSES
    if not path.is_file():
        raise ExportFormatError(f"{path}: no such classes file")
    try:
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                raise ExportFormatError(f"{path}: not an imprinting classes file (a single array, not an archive)")
            f.seek(0)
            limit = MAX_EXPANSION * os.fstat(f.fileno()).st_size + EXPANSION_SLACK
            with zipfile.ZipFile(f) as archive:
                header, arrays, head_arrays = _read_archive(archive, path, dim, limit)
    except ExportFormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, RuntimeError, NotImplementedError,
            zlib.error) as exc:  # RuntimeError, NotImplementedError: encrypted or unknown zip members
        problem = f"{exc.__class__.__name__}: {exc}"
        raise ExportFormatError(f"{path}: truncated or corrupt classes file ({problem})") from None
    return _classes_data(path, header, arrays, head_arrays)


def _read_archive(archive: zipfile.ZipFile, path: Path, dim: int | None, limit: int) -> tuple[dict, dict, dict]:
    """(header, arrays, head arrays) of an open classes archive, each array checked from its
    ``.npy`` header (dtype, shape, size) before it is read."""
    members = {info.filename[: -len(".npy")]: info for info in archive.infolist() if info.filename.endswith(".npy")}
    if "header" not in members:
        raise ExportFormatError(f"{path}: not an imprinting classes file (no header)")
    shape, dtype = member_header(archive, members["header"], "header", path, limit)
    if dtype != np.uint8 or len(shape) != 1:
        raise ExportFormatError(f"{path}: not an imprinting classes file (header is {dtype} {shape})")
    try:
        header = json.loads(read_member(archive, members["header"]).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportFormatError(f"{path}: damaged header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != CLASSES_FORMAT:
        raise ExportFormatError(f"{path}: not an imprinting classes file (no '{CLASSES_FORMAT}' header)")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportFormatError(f"{path}: damaged header (version {version!r})")
    if version > CLASSES_VERSION:
        raise ExportFormatError(
            f"{path}: written by a newer version (classes format {version}, this reads {CLASSES_VERSION}); "
            "upgrade imprinting"
        )
    missing = [k for k in _KEYS if k not in members]
    if missing:
        raise ExportFormatError(f"{path}: truncated classes file (missing {', '.join(missing)})")
    c, d = _check_header_fields(header, path)
    if dim is not None and d != dim:
        raise ExportFormatError(f"{path}: {d}-d classes for a {dim}-d embedder")
    want = {  # key: (shape, dtype kind)
        "weights": ((c, d), np.floating),
        "scale": ((c,) if header.get("per_class_scale", False) else (1,), np.floating),
        "sums": ((c, d), np.floating),
        "counts": ((c,), np.integer),
    }
    heads = [k for k in members if k.startswith("head_")] if header.get("head") is not None else []
    for key in heads:  # a closed-form head: centre (D,), covariance (D, D), reference rows (R, D)
        want[key] = ((d, d) if key == "head_covariance" else (d,) if key == "head_centre" else None, np.floating)
    calibration = header.get("calibration")
    if calibration is not None and "calibration_embeddings" not in members:
        calibration = header["calibration"] = None  # an older runtime wrote the header back without them
    if calibration is not None:  # kept calibration examples: one row of d per class name
        labels = calibration.get("labels") if isinstance(calibration, dict) else None
        if not isinstance(labels, list):
            raise ExportFormatError(f"{path}: damaged classes file (calibration without its class names)")
        want["calibration_embeddings"] = ((len(labels), d), np.floating)
    for key, (expected, kind) in want.items():
        shape, dtype = member_header(archive, members[key], key, path, limit)
        if not np.issubdtype(dtype, kind):
            raise ExportFormatError(f"{path}: damaged classes file ({key} has dtype {dtype})")
        if expected is None and (len(shape) != 2 or shape[1] != d):
            raise ExportFormatError(f"{path}: damaged classes file ({key} has shape {shape}, expected (rows, {d}))")
        if expected is not None and shape != expected:
            raise ExportFormatError(f"{path}: damaged classes file ({key} has shape {shape}, "
                                    f"expected {expected} for {c} classes of {d} dimensions)")
    arrays = {key: read_member(archive, members[key]) for key in _KEYS[1:]}
    if calibration is not None:
        arrays["calibration_embeddings"] = read_member(archive, members["calibration_embeddings"])
    return header, arrays, {key[len("head_"):]: read_member(archive, members[key]) for key in heads}


def _check_header_fields(header: dict, path: Path) -> tuple[int, int]:
    """(classes, dim) of a classes header, after checking the type of every field it uses."""
    problem = _header_problem(header)
    if problem:
        raise ExportFormatError(f"{path}: damaged classes file (header field {problem})")
    return len(header["class_names"]), header["dim"]


def _header_problem(header: dict) -> str | None:
    """The first header field of the wrong type, described, or None."""
    names, dim = header.get("class_names"), header.get("dim")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return "class_names is not a list of strings"
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        return f"dim is {dim!r}, not a positive integer"
    if not isinstance(header.get("per_class_scale", False), bool):
        return f"per_class_scale is {header['per_class_scale']!r}, not true or false"
    for key in ("initial_scale", "unknown_threshold"):
        value = header.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return f"{key} is {value!r}, not a number"
    if header.get("embedder_id") is not None and not isinstance(header["embedder_id"], str):
        return f"embedder_id is {header['embedder_id']!r}, not a string"
    return None


def _classes_data(path: Path, header: dict, arrays: dict, head_arrays: dict) -> ClassesData:
    """The ``ClassesData`` of a checked header and arrays (``validate`` checks the values)."""
    known = {"format", "version", "class_names", "dim", "per_class_scale", "initial_scale",
             "unknown_threshold", "embedder_id", "head", "calibration"}
    threshold = header.get("unknown_threshold")
    try:
        head = None
        if header.get("head") is not None:
            head = WhitenedHead.from_parts(header["head"], head_arrays)
            if head.dim != header["dim"]:
                raise TypeError(f"a {head.dim}-d head for {header['dim']}-d classes")
        calibration = header.get("calibration")
        kept = None
        if calibration is not None:
            kept = CalibrationSet.from_stored(calibration, arrays["calibration_embeddings"])
        return ClassesData(
            class_names=header["class_names"],
            weights=arrays["weights"],
            scale=arrays["scale"],
            sums=arrays["sums"],
            counts=arrays["counts"],
            dim=header["dim"],
            per_class_scale=header.get("per_class_scale", False),
            initial_scale=float(header.get("initial_scale", 10.0)),
            unknown_threshold=None if threshold is None else float(threshold),
            embedder_id=header.get("embedder_id"),
            extra={k: v for k, v in header.items() if k not in known},
            head=head,
            calibration=kept,
            threshold_follows=kept is not None and calibration.get("threshold_follows") is True,
        )
    except ExportFormatError as exc:
        raise ExportFormatError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportFormatError(f"{path}: damaged classes file ({exc.__class__.__name__}: {exc})") from None
