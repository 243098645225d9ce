"""Checks a class store makes of itself at start, independent of the database behind it.

A store implementation (SQLite in ``serve.store``, or another) reads its rows and hands them
to these functions; each raises ``StoreError`` with one sentence naming the damage. They
take plain Python and numpy values, so any store can reuse them:

  ``check_meta(label, meta, holds_classes, dim, fingerprint, schema_version)``  the model the store belongs to
  ``ExampleSums``                    sums a class's stored embeddings as the rows stream past
  ``check_rows(label, dim, classes, examples)``   every class: count in range, sum finite and
                                     equal to the sum of its examples' normalized embeddings
  ``check_count(label, name, count)``  a count that an upload would take out of range
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

# The most examples one class may hold: far above any real use, far below int64 overflow.
MAX_COUNT = 2**31 - 1
# Example ids are SQL 64-bit integers from 1: any other id names no example.
MAX_EXAMPLE_ID = 2**63 - 1

# Stored sums against the sum recomputed from the examples: float64 sums of unit vectors,
# accumulated in another order, agree to ~1e-15 per example; damage is far above this.
SUM_TOLERANCE = 1e-6


class StoreError(RuntimeError):
    """A store that cannot be used: another model's, in use by another process, damaged,
    or a write the disk refused."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now (a database down, restarting, hung, or a network
    between): this call changed nothing. Retry later."""


class StoreInDoubt(StoreUnavailable):
    """A call the database did not answer in time: if it was a write, it may still commit
    when the database answers (whole, never in part), and every replica then follows it."""


class ClassTaken(StoreError):
    """A rename onto a name another stored class has: nothing changed."""


def check_meta(label: str, meta: dict, holds_classes: bool, dim: int, fingerprint: str, schema_version: int) -> bool:
    """The store's ``meta`` key/values against the model. Returns True for a new store (no
    meta and no classes: the caller records the model); a store with classes but no
    fingerprint is damaged, never adopted by whichever model opens it next."""
    if not meta:
        if holds_classes:
            raise StoreError(f"{label}: damaged store: its meta table is empty (no model fingerprint) but it holds "
                             "classes; restore it from a backup or use a new --store file")
        return True
    try:
        schema, stored_dim = int(meta.get("schema", 0)), int(meta.get("dim", -1))
    except ValueError:
        raise StoreError(f"{label}: damaged store: meta has schema {meta.get('schema')!r}, dim {meta.get('dim')!r}") from None
    if schema > schema_version:
        raise StoreError(f"{label}: written by a newer version of imprinting (schema {schema})")
    if not meta.get("model"):
        raise StoreError(f"{label}: damaged store: meta has no model fingerprint")
    if meta["model"] != fingerprint or stored_dim != dim:
        raise StoreError(
            f"{label}: this store holds classes of another model "
            f"({meta.get('model_description') or 'unknown'}, {meta.get('dim')}-d embeddings); its embeddings "
            "mean nothing to this one. Use the model it was made with, or a new --store file."
        )
    return False


class ExampleSums:
    """Per class key: the number of stored examples and the float64 sum of their
    L2-normalized float32 embeddings (as ``ClassTable`` sums them), fed row by row."""

    def __init__(self, label: str, dim: int):
        self.label, self.dim = label, dim
        self.counts: dict = {}
        self.sums: dict = {}

    def add(self, key, blob: bytes) -> None:
        e = np.frombuffer(blob, dtype="<f4")
        if e.shape != (self.dim,):
            raise StoreError(f"{self.label}: damaged store: an example of class {key!r} has {e.size} values, "
                             f"not {self.dim}")
        e = e.astype(np.float64)
        norm = np.linalg.norm(e)
        if not np.isfinite(e).all() or not norm > 0:
            raise StoreError(f"{self.label}: damaged store: an example of class {key!r} has a NaN, infinite or "
                             "zero embedding")
        self.counts[key] = self.counts.get(key, 0) + 1
        self.sums[key] = self.sums.get(key, 0.0) + e / norm


def check_count(label: str, name: str, count) -> None:
    if not isinstance(count, (int, np.integer)) or not 1 <= int(count) <= MAX_COUNT:
        raise StoreError(f"{label}: class {name!r} would have {count} examples (the limit is 1-{MAX_COUNT})")


def check_rows(label: str, dim: int, classes: Iterable[tuple], examples: ExampleSums) -> None:
    """``classes``: (key, name, sum bytes or array, count) per class, keyed as ``examples``.
    Raises ``StoreError`` naming the first damaged class."""
    seen = set()
    for key, name, total, count in classes:
        seen.add(key)
        where = f"{label}: damaged store: class {name!r}"
        if not isinstance(name, str) or not name.strip():
            raise StoreError(f"{label}: damaged store: a class has the name {name!r}")
        if not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise StoreError(f"{where} has the example count {count!r} (expected 1-{MAX_COUNT})")
        total = np.frombuffer(total, dtype="<f8") if isinstance(total, (bytes, bytearray, memoryview)) else np.asarray(total)
        if total.shape != (dim,):
            raise StoreError(f"{where} has a sum of {total.size} values, not {dim}")
        if not np.isfinite(total).all():
            raise StoreError(f"{where} has a NaN or infinite sum")
        n = examples.counts.get(key, 0)
        if n != count:
            raise StoreError(f"{where} records {count} examples but the store holds {n}")
        gap = float(np.abs(total - examples.sums[key]).max())
        if gap > SUM_TOLERANCE * max(1, count):
            raise StoreError(f"{where}: its sum differs from the sum of its examples by {gap:.3g}")
    orphans = set(examples.counts) - seen
    if orphans:
        raise StoreError(f"{label}: damaged store: {sum(examples.counts[k] for k in orphans)} examples belong "
                         "to no class")
