"""The class table: the one owner of every class's state (numpy only, no torch).

For each class, in order: its name, its vector (``weights``, float32; for an imprinted class
the normalized float64 ``sums``), its L2-normalized ``templates`` (kept up to date with the
rows, never recomputed per prediction), the float64 sum of its examples' L2-normalized
embeddings, the example ``counts`` (0 = a trained base class or a random one: it takes no
examples) and, with ``per_class_scale``, its own scale s. A shared scale is one value.

Imprinting (paper Sec. 3.2) is a sum: adding examples adds their normalized embeddings to
the class's running sum and the vector becomes the normalized sum, so teaching a class in
several calls gives exactly what one call gives, before and after saving.

The PyTorch model (``imprinting.model.ImprintModel``) trains the same rows: its classifier's
parameters share the table's buffers (``weight_buffer``/``scale_buffer``), and the model
calls ``refresh`` or ``set_vectors`` after its parameters change. The lite runtime, the
checkpoints, the classes file (``imprinting.classes_file``) and the service use this class's
methods only.

Per-class fields live in one dict of growable buffers (``Rows``), so a head that needs more
per-class statistics adds one entry and add / remove / snapshot carry it along. A closed-form
head (``head``, e.g. ``imprinting.heads.WhitenedHead``) keeps its rows there (``head_w``, the
correction-free bias ``head_b0``, ``head_lift`` and, with a correction rule, ``head_ref``): a
changed class's rows are recomputed alone, the others stay; the biases in use (``head_rows``)
follow the correction chosen for the classes held now. That bookkeeping is the mixin
``TableHead`` (``imprinting.classes_head``).

A calibrated table also keeps the examples its calibration scored (``calibration``, an
``imprinting.calibration_set.CalibrationSet``): adding a class with examples adds them,
removing a class drops them, so the scores, the unknown threshold and the prediction sets are
recomputed for the classes of now, as one batch computation would (once per ``version``: every
change of the table counts it up).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imprinting.calibration_set import CalibrationSet
from imprinting.classes_head import TableHead
from imprinting.errors import ClassError, UnknownClassError
from imprinting.rows import Rows, normalize_rows, template_of


@dataclass(frozen=True)
class ClassSnapshot:
    """One class's whole state at a moment (copies), for undoing a change exactly."""

    name: str
    index: int
    fields: dict
    kept: np.ndarray | None = None  # its kept calibration examples (a calibrated table's)


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


class ClassTable(TableHead):
    """Names, vectors, templates, sums, counts and scales of a model's classes."""

    def __init__(self, dim: int, per_class_scale: bool = False, initial_scale: float = 10.0, head=None):
        if int(dim) < 1:
            raise ClassError(f"the embedding size must be at least 1, got {dim}")
        self.dim = int(dim)
        self.per_class_scale = bool(per_class_scale)
        self.initial_scale = float(initial_scale)
        self._names: list[str] = []
        self._names_tuple: tuple[str, ...] | None = None
        self._index: dict[str, int] = {}
        self._rows = {
            "weights": Rows(np.zeros((0, self.dim), np.float32)),
            "templates": Rows(np.zeros((0, self.dim), np.float32)),
            "sums": Rows(np.zeros((0, self.dim), np.float64)),
            "counts": Rows(np.zeros(0, np.int64)),
        }
        if self.per_class_scale:
            self._rows["scale"] = Rows(np.zeros(0, np.float32))
        self._shared_scale = np.full(1, self.initial_scale, np.float32)
        self._stale = False
        self.version = 0  # counts every change (what calibration results are kept for)
        self.calibration: CalibrationSet | None = None
        self.head = self._head_b = self._head_state = None
        if head is not None:
            self.set_head(head)

    @classmethod
    def from_arrays(cls, names, weights, sums, counts, scale, per_class_scale: bool = False,
                    initial_scale: float = 10.0, head=None, calibration: CalibrationSet | None = None) -> ClassTable:
        """A table holding exactly these rows (a checkpoint's or a classes file's)."""
        table = cls(np.asarray(weights).shape[1], per_class_scale, initial_scale)
        table._load(list(names), weights, sums, counts, scale)
        if head is not None:
            table.set_head(head)
        table.calibration = calibration.only(table.names) if calibration is not None else None
        return table

    def _changed(self) -> None:
        self.version += 1

    def _load(self, names, weights, sums, counts, scale) -> None:
        names = [str(n) for n in names]
        if len(set(names)) != len(names):
            raise ClassError("class names must be unique")
        c = len(names)
        weights = np.asarray(weights, np.float32).reshape(c, self.dim)
        scale = np.asarray(scale, np.float32).reshape(-1)
        self._names, self._index = names, {n: i for i, n in enumerate(names)}
        self._names_tuple = None
        self._rows["weights"] = Rows(weights)
        self._rows["templates"] = Rows(np.empty_like(weights))
        self._stale = True  # templates computed at first use
        self._rows["sums"] = Rows(np.asarray(sums, np.float64).reshape(c, self.dim))
        self._rows["counts"] = Rows(np.asarray(counts, np.int64).reshape(c))
        if self.per_class_scale:
            self._rows["scale"] = Rows(np.broadcast_to(scale, (c,)) if scale.size == 1 else scale.reshape(c))
        else:
            if scale.size != 1 and c and not np.all(scale == scale[0]):
                raise ClassError("one scale per class, but this table has one shared scale")
            self._shared_scale = np.array(scale[:1] if scale.size else [self.initial_scale], np.float32)

    # -- reading -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    @property
    def names(self) -> tuple[str, ...]:
        if self._names_tuple is None:  # every change of the names resets it
            self._names_tuple = tuple(self._names)
        return self._names_tuple

    def name_at(self, index: int) -> str:
        return self._names[index]

    def index_of(self, name: str) -> int:
        try:
            return self._index[name]
        except (KeyError, TypeError):
            raise UnknownClassError(f"unknown class {name!r} (the model has {len(self)} classes)") from None

    def count(self, name: str) -> int:
        return int(self._rows["counts"].view[self.index_of(name)])

    def is_imprinted(self, name: str) -> bool:
        return self.count(name) > 0

    @property
    def weights(self) -> np.ndarray:
        """(C, D) float32 class vectors as stored (read-only)."""
        return _readonly(self._rows["weights"].view)

    @property
    def templates(self) -> np.ndarray:
        """(C, D) float32 L2-normalized class vectors (read-only). Kept with the rows: after a
        bulk change (loading, training) they are computed once, at the next use."""
        if self._stale:
            self._rows["templates"].view[...] = template_of(self._rows["weights"].view)
            self._stale = False
        return _readonly(self._rows["templates"].view)

    @property
    def sums(self) -> np.ndarray:
        """(C, D) float64 sums of the examples' L2-normalized embeddings (read-only)."""
        return _readonly(self._rows["sums"].view)

    @property
    def counts(self) -> np.ndarray:
        """(C,) int64 examples per class; 0 = base or random class (read-only)."""
        return _readonly(self._rows["counts"].view)

    @property
    def scale(self) -> np.ndarray:
        """(C,) float32 with ``per_class_scale``, else (1,): the scale s (read-only)."""
        return _readonly(self._rows["scale"].view if self.per_class_scale else self._shared_scale)

    # -- for the PyTorch mirror ----------------------------------------------------------
    def weight_buffer(self) -> np.ndarray:
        """The writable (C, D) rows behind ``weights``: only for a trainer sharing them,
        which must call ``refresh`` after writing."""
        return self._rows["weights"].view

    def scale_buffer(self) -> np.ndarray:
        return self._rows["scale"].view if self.per_class_scale else self._shared_scale

    def refresh(self) -> None:
        """The vectors were trained in place: the templates are recomputed at their next use
        (and the head's rows now)."""
        self._stale = True
        self._changed()
        if self.head is not None:
            self.set_head(self.head)

    def set_vectors(self, weights: np.ndarray, scale: np.ndarray | None = None) -> None:
        """Overwrite every vector (and the scale) with trained values; sums and counts stay."""
        w = np.asarray(weights, np.float32)
        if w.shape != (len(self), self.dim):
            raise ClassError(f"expected ({len(self)}, {self.dim}) vectors, got {w.shape}")
        self._rows["weights"].view[...] = w
        if scale is not None:
            self.scale_buffer()[...] = np.asarray(scale, np.float32).reshape(self.scale_buffer().shape)
        self.refresh()

    # -- changing ------------------------------------------------------------------------
    def _new_scale(self) -> float:
        """A new class's own scale: the mean of the others' (trained) scales, or the initial one."""
        scales = self._rows["scale"].view
        return float(scales.mean()) if len(scales) else self.initial_scale

    def _check_new(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ClassError("the class name is empty")
        if name in self._index:
            raise ClassError(f"class {name!r} already exists")

    def _summed(self, embeddings) -> tuple[np.ndarray, int]:
        """(sum of the L2-normalized float32 embeddings in float64, count)."""
        e = np.asarray(embeddings)
        if e.ndim != 2 or e.shape[1] != self.dim or e.shape[0] == 0:
            raise ClassError(f"expected embeddings of shape (n >= 1, {self.dim}), got {e.shape}")
        e = e.astype(np.float32).astype(np.float64)
        if not np.isfinite(e).all():
            raise ClassError("the embeddings have NaN or infinite values")
        return normalize_rows(e).sum(axis=0), e.shape[0]

    def _append(self, name: str, vector: np.ndarray, total: np.ndarray, count: int) -> int:
        index = len(self._names)
        vector = np.asarray(vector, np.float32).reshape(self.dim)
        row = {"weights": vector, "templates": template_of(vector), "sums": total, "counts": count}
        if self.per_class_scale:
            row["scale"] = self._new_scale()
        if self.head is not None:
            self.templates  # noqa: B018  (stale templates first: the head rows read them)
            row.update({k: np.zeros(r.view.shape[1:]) for k, r in self._rows.items() if k.startswith("head_")})
        for key, value in row.items():
            self._rows[key].append(np.asarray(value, self._rows[key].view.dtype).reshape(1, *self._rows[key].view.shape[1:]))
        self._names.append(name)
        self._index[name] = index
        self._names_tuple = None
        self._changed()
        self._head_row(index, added=True)
        return index

    def add(self, name: str, embeddings) -> int:
        """A new imprinted class: its vector is the normalized mean of ``embeddings`` (n, D)."""
        self._check_new(name)
        total, n = self._summed(embeddings)
        self._keep(name, embeddings)
        return self._append(name, normalize_rows(total), total, n)

    def _keep(self, name: str, embeddings) -> None:
        if self.calibration is not None:
            self.calibration = self.calibration.with_examples(name, np.asarray(embeddings, np.float32))

    def extend(self, name: str, embeddings) -> int:
        """More examples for an imprinted class: its vector is the normalized sum of all."""
        index = self.index_of(name)
        if not self._rows["counts"].view[index]:
            raise ClassError(f"class {name!r} is a trained base class; only imprinted classes take examples")
        total, n = self._summed(embeddings)
        self._keep(name, embeddings)
        self._changed()
        sums = self._rows["sums"].view
        sums[index] += total
        self._rows["counts"].view[index] += n
        self._rows["weights"].view[index] = normalize_rows(sums[index]).astype(np.float32)
        self._rows["templates"].view[index] = template_of(self._rows["weights"].view[index])
        self._head_row(index)
        return index

    def imprint(self, name: str, embeddings) -> int:
        """``extend`` an existing class, else ``add`` a new one. Returns its index."""
        return self.extend(name, embeddings) if name in self._index else self.add(name, embeddings)

    def add_vector(self, name: str, vector) -> int:
        """A class with a given vector and no examples (a trained base class, a random one)."""
        self._check_new(name)
        vector = np.asarray(vector, np.float32)
        if vector.shape != (self.dim,) or not np.isfinite(vector).all():
            raise ClassError(f"expected a finite ({self.dim},) vector for {name!r}, got shape {vector.shape}")
        return self._append(name, vector, np.zeros(self.dim), 0)

    def add_from_sum(self, name: str, total, count: int) -> int:
        """Restore an imprinted class from its stored sum and count: the vector is
        ``normalize(sum)``, the same bits as imprinting the examples that made the sum."""
        self._check_new(name)
        total = np.asarray(total, np.float64)
        if int(count) < 1 or total.shape != (self.dim,) or not np.isfinite(total).all():
            raise ClassError(f"need a finite ({self.dim},) sum of at least one example for {name!r}")
        return self._append(name, normalize_rows(total), total, int(count))

    def remove(self, name: str) -> None:
        """Remove an imprinted class (base classes are protected); later classes move up."""
        index = self.index_of(name)
        if not self._rows["counts"].view[index]:
            raise ClassError(f"class {name!r} is a base class and cannot be removed")
        for rows in self._rows.values():
            rows.delete(index)
        del self._names[index]
        self._index = {n: i for i, n in enumerate(self._names)}
        self._names_tuple = None
        self._changed()
        if self.calibration is not None:
            self.calibration = self.calibration.without_class(name)
        if self.head is not None:
            self._rechoose()

    def snapshot(self, name: str) -> ClassSnapshot:
        index = self.index_of(name)
        self.templates  # noqa: B018  (bring stale templates up to date before copying a row)
        fields = {k: np.array(r.view[index], copy=True) for k, r in self._rows.items()}
        kept = self.calibration.rows_of(name) if self.calibration is not None else None
        return ClassSnapshot(name, index, fields, kept)

    def restore(self, snap: ClassSnapshot) -> None:
        """Put a class back exactly as it was when ``snapshot`` was taken, at its place."""
        self._changed()
        if self.calibration is not None and snap.kept is not None:  # None: its kept examples stay as they are
            self.calibration = self.calibration.without_class(snap.name)
            if len(snap.kept):
                self.calibration = self.calibration.with_examples(snap.name, snap.kept)
        if snap.name in self._index:
            index = self._index[snap.name]
            for key, value in snap.fields.items():
                self._rows[key].view[index] = value
            self._head_row(index)  # the head's rows of the restored sum and count, then the biases
            return
        index = min(snap.index, len(self._names))
        for key, value in snap.fields.items():
            self._rows[key].insert(index, np.asarray(value))
        self._names.insert(index, snap.name)
        self._index = {n: i for i, n in enumerate(self._names)}
        self._names_tuple = None
        self._head_row(index)

    def select(self, indices) -> ClassTable:
        """A new table of the rows at ``indices``, in that order (copies)."""
        idx = [int(i) for i in indices]
        scale = self.scale[idx] if self.per_class_scale else self.scale
        return ClassTable.from_arrays([self._names[i] for i in idx], self.weights[idx], self.sums[idx],
                                      self.counts[idx], scale, self.per_class_scale, self.initial_scale, self.head,
                                      self.calibration)

    def with_scale_mode(self, per_class_scale: bool) -> ClassTable:
        """A copy with one scale per class (the shared one repeated) or one shared scale
        (refused if the classes' scales differ)."""
        scale = self.scale
        if per_class_scale and not self.per_class_scale:
            scale = np.broadcast_to(scale, (len(self),))
        elif not per_class_scale and self.per_class_scale:
            if len(self) and not np.all(scale == scale[0]):
                raise ClassError("one scale per class, but the model's classifier has one shared scale")
            scale = scale[:1] if len(self) else np.array([self.initial_scale], np.float32)
        return ClassTable.from_arrays(self._names, self.weights, self.sums, self.counts, scale, per_class_scale,
                                      self.initial_scale, self.head, self.calibration)

    def copy(self) -> ClassTable:
        return ClassTable.from_arrays(self._names, self.weights, self.sums, self.counts, self.scale,
                                      self.per_class_scale, self.initial_scale, self.head, self.calibration)

    # -- predicting ----------------------------------------------------------------------
    def cosines(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, C) cosines of unit-length embeddings with every class template."""
        return np.asarray(embeddings, np.float32) @ self.templates.T

    def logits(self, cosines: np.ndarray, embeddings: np.ndarray | None = None) -> np.ndarray:
        """The scores a prediction's softmax and ranking use: ``s * cos``, or the head's
        scores of ``embeddings`` when the table has a head."""
        if self.head is None:
            return self.scale * cosines
        if embeddings is None:
            raise ClassError("this table's head scores embeddings, not cosines")
        return self.head.logits(embeddings, self._rows["head_w"].view, self._head_b)
