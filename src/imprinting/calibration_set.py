"""The taught examples a calibration was computed from, kept with the class table, so that the
calibration scores, the unknown threshold and the prediction sets follow the classes (numpy).

``imprinting.calibration`` scores each taught example by leave-one-out and turns the scores
into a threshold (``imprinting.conformal``). Those scores depend on every class: a class added
later competes with every example, a class removed stops competing. A ``CalibrationSet`` keeps
the examples themselves (their unit embeddings and class names) and the rate the user asked
for (a false-reject rate, or a false-accept rate), so that after any change of the classes the
scores and the threshold are computed again, in one batch, from the classes of now:
``calibration.kept_result(set, table)`` is exactly ``calibrate_table`` on the kept examples at
the table's present scale (the scale itself is fitted only when the user calibrates). Adding a class with examples
adds its examples; removing a class drops them. A class restored from a sum (no examples) only
competes.

At most ``MAX_ROWS`` examples are kept: those with the smallest hash of (embedding bytes, class
name), a uniform sample of the examples that does not depend on the order they were taught in,
so a table taught step by step keeps the same examples, in the same order, as one built at once.
One limit: past ``MAX_ROWS`` examples, the places of a removed class's examples are not refilled
(the examples beyond the cap were never kept), so after a removal the sample is smaller than
the one a calibration from scratch would keep: still a uniform sample of the examples left, and
its scores still a conformal calibration, but not the same numbers. The service re-reads its
store's examples instead, so it has no such limit.
Recomputing costs O(rows x classes x D): 2,000 rows and 1,000 classes of 1280-d are a matrix
product of 2.6 GFLOP, tens of milliseconds; it runs once per change of the table
(``ClassTable.version``), not per prediction.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np

from imprinting.rows import normalize_rows

MAX_ROWS = 2000


def _keys(embeddings: np.ndarray, labels) -> np.ndarray:
    """A 64-bit hash of each row's float32 bytes and class name (the sampling order)."""
    return np.array([int.from_bytes(hashlib.blake2b(e.tobytes() + b"\0" + name.encode(), digest_size=8).digest(),
                                    "little") for e, name in zip(embeddings, labels)], np.uint64)


def _rate(value, name: str, zero_allowed: bool):
    """A target rate as stored: None, or a real number in (0, 1) ([0, 1) with ``zero_allowed``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            not ((0 <= value if zero_allowed else 0 < value) and value < 1):
        raise ValueError(f"calibration examples: {name} is {value!r}, not a rate in {'[0' if zero_allowed else '(0'}, 1)")
    return float(value)


@dataclass(frozen=True)
class CalibrationSet:
    """Kept examples (``embeddings`` (M, D) float32 unit rows, one class name each in
    ``labels``) and the rate asked for: ``target_false_reject`` or ``target_false_accept``.
    ``normalized``: the rows are already the kept unit float32 rows (as stored), not normalized
    again (normalizing twice may move a last bit, and with it a row's place in the sample);
    ``keys``: their sampling keys, when known."""

    embeddings: np.ndarray
    labels: tuple = ()
    target_false_reject: float | None = None
    target_false_accept: float | None = None
    normalized: bool = field(default=False, repr=False, compare=False)
    keys: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        e = np.asarray(self.embeddings, np.float32)
        labels = tuple(str(n) for n in self.labels)
        if e.ndim != 2 or e.shape[0] != len(labels) or not np.isfinite(e).all():
            raise ValueError(f"calibration examples: expected finite (n, D) embeddings with one class each, "
                             f"got {e.shape} and {len(labels)} names")
        reject = _rate(self.target_false_reject, "target_false_reject", zero_allowed=False)
        accept = _rate(self.target_false_accept, "target_false_accept", zero_allowed=True)
        if (reject is None) == (accept is None):
            raise ValueError("calibration examples: give exactly one of a false-reject or a false-accept rate")
        if not self.normalized and len(e):
            e = normalize_rows(e.astype(np.float64)).astype(np.float32)
        keys = self.keys if self.keys is not None and len(self.keys) == len(e) else _keys(e, labels)
        order = np.argsort(keys, kind="stable")[:MAX_ROWS]  # canonical order: the same set in any teaching order
        e = np.ascontiguousarray(e[order])
        e.flags.writeable = False
        for name, value in (("embeddings", e), ("labels", tuple(labels[i] for i in order)),
                            ("keys", np.asarray(keys, np.uint64)[order]), ("normalized", True),
                            ("target_false_reject", reject), ("target_false_accept", accept), ("_memo", None)):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def _new(self, embeddings, labels, keys) -> CalibrationSet:
        return CalibrationSet(embeddings, labels, self.target_false_reject, self.target_false_accept, True, keys)

    # -- following the classes --------------------------------------------------------
    def with_examples(self, name: str, embeddings) -> CalibrationSet:
        """Also ``embeddings`` (n, D) of class ``name`` (taught or extended); only theirs are hashed."""
        e = np.asarray(embeddings, np.float32).reshape(-1, self.dim)
        e = normalize_rows(e.astype(np.float64)).astype(np.float32) if len(e) else e
        labels = (str(name),) * len(e)
        return self._new(np.concatenate([self.embeddings, e]), self.labels + labels,
                         np.concatenate([self.keys, _keys(e, labels)]))

    def renamed(self, old: str, new: str) -> CalibrationSet:
        """Class ``old``'s examples under its new name (their sampling keys are made anew)."""
        rows = self.rows_of(old)
        return self.without_class(old).with_examples(new, rows) if len(rows) else self

    def problems(self, names, counts, dim: int) -> list[str]:
        """What does not fit these classes (a damaged file): the width, or more examples of a
        class than it was taught from."""
        if self.dim != dim:
            return [f"calibration examples are {self.dim}-d, the classes {dim}-d"]
        taught = dict(zip(names, np.asarray(counts).tolist()))
        kept: dict[str, int] = {}
        for name in self.labels:
            kept[name] = kept.get(name, 0) + 1
        bad = [n for n, k in kept.items() if n in taught and k > taught[n]]
        return [f"calibration keeps more examples of {bad[0]!r} than it was taught from"] if bad else []

    def rows_of(self, name: str) -> np.ndarray:
        """The kept examples of class ``name`` (a copy)."""
        return self.embeddings[[i for i, n in enumerate(self.labels) if n == name]].copy()

    def without_class(self, name: str) -> CalibrationSet:
        return self.only(n for n in set(self.labels) if n != name)

    def only(self, names) -> CalibrationSet:
        """The kept examples of these classes only."""
        names = set(names)
        keep = [i for i, n in enumerate(self.labels) if n in names]
        return self._new(self.embeddings[keep], [self.labels[i] for i in keep], self.keys[keep])

    # -- what they give (computed by ``imprinting.calibration.kept_result``) ----------------
    def peek(self):
        """The last result computed (for any table), or None: a read that never computes."""
        memo = self._memo
        return None if memo is None else memo[1]

    def peek_key(self):
        """(the (table id, version) it was computed for, the last result), or None."""
        return self._memo

    def seed(self, table, result) -> None:
        """``result`` is what ``kept_result(self, table)`` gives now (the calibration that made
        this set, at the scale it applied): kept, not computed twice."""
        self.seed_key((id(table), table.version), result)

    def seed_key(self, key, result) -> None:
        object.__setattr__(self, "_memo", (key, result))

    # -- storage -------------------------------------------------------------------------
    def header(self) -> dict:
        """The JSON-able part (the embeddings are stored as an array beside it)."""
        return {"labels": list(self.labels), "target_false_reject": self.target_false_reject,
                "target_false_accept": self.target_false_accept}

    @classmethod
    def from_stored(cls, header, embeddings) -> CalibrationSet:
        """From ``header()`` (a dict or its JSON) and the stored (M, D) array; ``ValueError``
        naming what is wrong with a damaged one."""
        try:
            h = json.loads(header) if isinstance(header, str) else header
            if not isinstance(h, dict) or not isinstance(h.get("labels"), list) or \
                    not all(isinstance(n, str) for n in h["labels"]):
                raise ValueError("expected an object with labels, a list of class names")
            return cls(np.asarray(embeddings, np.float32), h["labels"], h.get("target_false_reject"),
                       h.get("target_false_accept"), normalized=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"calibration examples: {exc}") from None
