"""The one contract between the service and a class store: what ``Service`` may call, what each
call promises, the records it returns, and the checks both stores make of what they are given.

Two stores keep it: SQLite (``serve.store``: one server per file) and PostgreSQL
(``serve.store_pg``: any number of replicas over one database, which also keeps
``SharedClassStore``). ``Service`` depends on this module alone (``serve.stores.open_store``
chooses the store), and ``tests/serve/test_pg_store.py`` runs one suite against both.

Errors, the same kinds from both stores, whatever the driver said (``serve.integrity``):
``StoreError`` (the store refused: a damaged store, a full disk, another model's store),
``StoreUnavailable`` (it cannot be reached now: retry), ``StoreInDoubt`` (a write sent but not
answered in time), ``ClassTaken`` (a rename onto a name another class has); ``KeyError`` for an
example the class does not have; ``ValueError`` for arguments that break the contract (shapes,
NaN, counts out of range).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from imprinting.serve.integrity import (  # noqa: F401  (the contract's errors, re-exported)
    MAX_COUNT,
    MAX_EXAMPLE_ID,
    ClassTaken,
    StoreError,
    StoreInDoubt,
    StoreUnavailable,
)


@dataclass
class StoredClass:
    name: str
    sum: np.ndarray  # (dim,) float64: the sum of the examples' L2-normalized embeddings
    count: int


@dataclass
class StoredExample:
    id: int
    embedding: np.ndarray  # (dim,) float32
    sha256: str
    filename: str


@runtime_checkable
class ClassStore(Protocol):
    """The classes taught to one model through the service, durable."""

    dim: int
    shared: bool  # other processes write too: the service follows them (``SharedClassStore``)

    # -- reading ------------------------------------------------------------------------
    def classes(self) -> list[StoredClass]:
        """Every stored class, in the order it was created."""

    def get_class(self, name: str) -> StoredClass | None: ...

    def examples(self, name: str) -> list[StoredExample]:
        """Class ``name``'s examples, oldest first (empty when there is no such class)."""

    def example_records(self, name: str) -> list[dict]:
        """Class ``name``'s examples, oldest first: id, added (Unix time), sha256, filename,
        thumbnail (JPEG bytes or None)."""

    def labelled_embeddings(self) -> tuple[list[str], np.ndarray]:
        """Every stored example's class name and float32 embedding, by class then id."""

    def setting(self, key: str) -> str | None: ...

    def state(self) -> dict:
        """``{"state": "ok" | "degraded" | "closed", "detail": ...}``, read without waiting."""

    # -- writing: each one transaction, acknowledged once durable --------------------------
    def add_examples(self, name: str, embeddings: np.ndarray, new_sum: np.ndarray, new_count: int,
                     sha256s: list[str], filenames: list[str]) -> list[int]:
        """Record an upload and the class's new sum and count (created when missing); the
        store must hold ``new_count - len(embeddings)`` examples of it now, else nothing is
        written (``StoreError``). Returns the new examples' ids."""

    def remove_class(self, name: str) -> bool:
        """Delete a class and its examples; False if there was none."""

    def remove_example(self, name: str, example_id: int) -> tuple[np.ndarray, int] | None:
        """Delete one example and recompute its class from the others (None: it was the last,
        and the class is gone). ``KeyError``: no such example of that class."""

    def rename_class(self, name: str, new_name: str) -> bool:
        """False if there was no class ``name``; ``ClassTaken`` if ``new_name`` is taken."""

    def add_thumbnails(self, ids: list[int], jpegs: list[bytes]) -> None: ...

    def set_setting(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` in one transaction: the old value or the new one."""

    def close(self) -> None: ...


@runtime_checkable
class SharedClassStore(ClassStore, Protocol):
    """A store several replicas write (``serve.follow`` keeps each replica's memory in step):
    writes add to what the database holds, and every change has a change number."""

    url: str
    channel: str
    snapshot_seq: int

    def add_to_class(self, name: str, embeddings: np.ndarray, sha256s: list[str],
                     filenames: list[str]) -> tuple[list[int], StoredClass, bool]:
        """Add an upload to the class as the database holds it: (ids, the class as committed,
        with its ``version``, whether this created it)."""

    def class_as_of(self, name: str) -> tuple[StoredClass | None, int]:
        """(the class or None, the change number that is true as of), from one snapshot."""

    def sequence(self) -> int: ...

    def changes_since(self, seq: int, limit: int = 10_000) -> list[tuple[int, str]]: ...

    def versions(self) -> tuple[int, dict[str, int]]: ...


def checked_upload(dim: int, name: str, embeddings, sha256s: list[str], filenames: list[str]) -> np.ndarray:
    """What both stores check of an upload before writing anything: (n >= 1, dim) finite
    embeddings (as little-endian float32), one sha256 and one file name each (``ValueError``
    names the problem; a class count out of range is ``integrity.check_count``'s ``StoreError``).
    Returns the embeddings."""
    e = np.ascontiguousarray(embeddings, dtype="<f4")
    if e.ndim != 2 or e.shape[1] != dim or len(e) == 0:
        raise ValueError(f"expected (n >= 1, {dim}) embeddings, got {e.shape}")
    if not (len(e) == len(sha256s) == len(filenames)):
        raise ValueError("one sha256 and one file name per embedding")
    if not np.isfinite(e).all():
        raise ValueError(f"class {name!r}: the embeddings have NaN or infinite values")
    return e
