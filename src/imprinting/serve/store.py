"""The service's durable class store: one SQLite file (WAL journal, synchronous=FULL).

Tables:
  ``meta``      the model the store belongs to (a fingerprint of the embedder) and the dim
  ``classes``   name, example count and the float64 sum of the examples' L2-normalized
                embeddings (what ``ImprintModel.add_class_from_sum`` restores a class from)
  ``examples``  each example's float32 embedding, the SHA-256 of its image bytes and its
                upload name, so a class can be rebuilt, an example removed, or a
                nearest-neighbour comparison made

Every upload is one ``BEGIN IMMEDIATE ... COMMIT`` transaction: after a crash (kill -9,
power loss) a class has either all of an upload's examples, with the sum and count that
include them, or none of them. ``commit`` returns only once SQLite has synced the WAL.

One service process owns a store: ``Store`` takes an exclusive lock on ``PATH.lock`` (the
kernel drops it when the process dies, even by kill -9), because the service keeps the
classes in memory and a second writer would make the two disagree.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS classes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    count INTEGER NOT NULL CHECK (count > 0),
    sum BLOB NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS examples (
    id INTEGER PRIMARY KEY,
    class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    sha256 TEXT NOT NULL,
    filename TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS examples_by_class ON examples(class_id);
"""


class StoreError(RuntimeError):
    """A store that cannot be used: another model's, in use by another process, damaged."""


@dataclass
class StoredClass:
    name: str
    sum: np.ndarray  # (dim,) float64
    count: int


@dataclass
class StoredExample:
    id: int
    embedding: np.ndarray  # (dim,) float32
    sha256: str
    filename: str


class Store:
    """The classes taught to one model through the service."""

    def __init__(self, path: str | os.PathLike, dim: int, fingerprint: str, description: str = ""):
        self.path = Path(path)
        self.dim = dim
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_exclusive(self.path.with_name(self.path.name + ".lock"))
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._transaction():
                for statement in _statements(SCHEMA):  # not executescript: it would commit
                    self._db.execute(statement)
                self._check_meta(dim, fingerprint, description)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"{self.path}: not a usable class store ({exc})") from None
        except BaseException:
            self.close()
            raise

    def _check_meta(self, dim: int, fingerprint: str, description: str) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            now = str(time.time())
            rows = {"schema": str(SCHEMA_VERSION), "dim": str(dim), "model": fingerprint,
                    "model_description": description, "created": now}
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", rows.items())
            return
        if int(meta.get("schema", 0)) > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: written by a newer version of imprinting (schema {meta['schema']})")
        if meta.get("model") != fingerprint or int(meta.get("dim", -1)) != dim:
            raise StoreError(
                f"{self.path}: this store holds classes of another model "
                f"({meta.get('model_description') or 'unknown'}, {meta.get('dim')}-d embeddings); its embeddings "
                "mean nothing to this one. Use the model it was made with, or a new --store file."
            )

    # -- reading ---------------------------------------------------------------
    def classes(self) -> list[StoredClass]:
        """Every stored class, in the order it was created."""
        rows = self._db.execute("SELECT name, sum, count FROM classes ORDER BY id").fetchall()
        return [StoredClass(name, np.frombuffer(blob, dtype="<f8").copy(), count) for name, blob, count in rows]

    def examples(self, name: str) -> list[StoredExample]:
        rows = self._db.execute(
            "SELECT e.id, e.embedding, e.sha256, e.filename FROM examples e JOIN classes c ON c.id = e.class_id "
            "WHERE c.name = ? ORDER BY e.id",
            (name,),
        ).fetchall()
        return [StoredExample(i, np.frombuffer(b, dtype="<f4").copy(), s, f) for i, b, s, f in rows]

    # -- example-level edits (issue 15): thumbnails, one example out, renaming ----------
    # A small JPEG per example lives in ``examples.thumbnail``, a column added on first use
    # (stores of earlier versions have none: their examples' thumbnails are NULL).
    def _ensure_thumbnails(self) -> None:
        if not getattr(self, "_thumbnails_ready", False):
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(examples)")}
            if "thumbnail" not in columns:
                with self._transaction():
                    self._db.execute("ALTER TABLE examples ADD COLUMN thumbnail BLOB")
            self._thumbnails_ready = True

    def add_thumbnails(self, ids: list[int], jpegs: list[bytes]) -> None:
        """Keep a small JPEG per example (``ids`` from ``add_examples``), in one transaction."""
        self._ensure_thumbnails()
        with self._transaction():
            self._db.executemany("UPDATE examples SET thumbnail = ? WHERE id = ?", list(zip(jpegs, ids)))

    def example_records(self, name: str) -> list[dict]:
        """Class ``name``'s examples in the order they were added: id, added (Unix time),
        sha256, filename and thumbnail (JPEG bytes, or None for examples stored without one)."""
        self._ensure_thumbnails()
        rows = self._db.execute(
            "SELECT e.id, e.created, e.sha256, e.filename, e.thumbnail FROM examples e JOIN classes c ON c.id = e.class_id "
            "WHERE c.name = ? ORDER BY e.id",
            (name,),
        ).fetchall()
        return [{"id": i, "added": created, "sha256": sha, "filename": fname, "thumbnail": jpeg}
                for i, created, sha, fname, jpeg in rows]

    def remove_example(self, name: str, example_id: int) -> tuple[np.ndarray, int] | None:
        """Delete one example of class ``name`` and recompute the class's sum and count from
        the remaining examples' stored embeddings, in one transaction; the class goes with
        its last example (returns None). Raises ``KeyError`` when the class has no such example.

        The sum is computed as ``ClassTable`` imprints: float32 embeddings in float64,
        L2-normalized, summed in their stored order, so it is the sum a batch imprint of the
        remaining examples gives, bit for bit."""
        from imprinting.classes import normalize_rows

        with self._transaction():
            row = self._db.execute(
                "SELECT c.id FROM examples e JOIN classes c ON c.id = e.class_id WHERE c.name = ? AND e.id = ?",
                (name, int(example_id)),
            ).fetchone()
            if row is None:
                raise KeyError(example_id)
            class_id = row[0]
            self._db.execute("DELETE FROM examples WHERE id = ?", (int(example_id),))
            blobs = self._db.execute("SELECT embedding FROM examples WHERE class_id = ? ORDER BY id",
                                     (class_id,)).fetchall()
            if not blobs:
                self._db.execute("DELETE FROM classes WHERE id = ?", (class_id,))
                return None
            e = np.stack([np.frombuffer(b, dtype="<f4") for (b,) in blobs]).astype(np.float32).astype(np.float64)
            total = normalize_rows(e).sum(axis=0)
            self._db.execute("UPDATE classes SET count = ?, sum = ?, updated = ? WHERE id = ?",
                             (len(blobs), np.ascontiguousarray(total, dtype="<f8").tobytes(), time.time(), class_id))
        return total, len(blobs)

    def rename_class(self, name: str, new_name: str) -> bool:
        """Rename a stored class (its examples follow: they reference its id); False if there
        was none. Raises ``sqlite3.IntegrityError`` if ``new_name`` is taken."""
        with self._transaction():
            cur = self._db.execute("UPDATE classes SET name = ?, updated = ? WHERE name = ?",
                                   (new_name, time.time(), name))
        return cur.rowcount > 0

    def labelled_embeddings(self) -> tuple[list[str], np.ndarray]:
        """Every stored example's class name and float32 embedding, by class then id."""
        rows = self._db.execute(
            "SELECT c.name, e.embedding FROM examples e JOIN classes c ON c.id = e.class_id ORDER BY c.id, e.id"
        ).fetchall()
        if not rows:
            return [], np.zeros((0, self.dim), np.float32)
        return [n for n, _ in rows], np.stack([np.frombuffer(b, dtype="<f4") for _, b in rows])

    def setting(self, key: str) -> str | None:
        """A value kept in ``meta`` under ``setting:<key>`` (e.g. the calibration), or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"setting:{key}",)).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"setting:{key}", value))

    # -- writing ---------------------------------------------------------------
    def add_examples(
        self,
        name: str,
        embeddings: np.ndarray,
        new_sum: np.ndarray,
        new_count: int,
        sha256s: list[str],
        filenames: list[str],
    ) -> list[int]:
        """Record an upload in one transaction: the examples, and the class's new sum and count.

        ``new_count - len(embeddings)`` must be the count the store holds now (0 for a new
        class); otherwise the store and the caller disagree and nothing is written.
        Returns the new examples' ids once the transaction is durable.
        """
        embeddings = np.ascontiguousarray(embeddings, dtype="<f4")
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim or len(embeddings) == 0:
            raise ValueError(f"expected (n >= 1, {self.dim}) embeddings, got {embeddings.shape}")
        if not (len(embeddings) == len(sha256s) == len(filenames)):
            raise ValueError("one sha256 and one file name per embedding")
        sum_blob = np.ascontiguousarray(new_sum, dtype="<f8").tobytes()
        now = time.time()
        with self._transaction():
            row = self._db.execute("SELECT id, count FROM classes WHERE name = ?", (name,)).fetchone()
            old_count = row[1] if row else 0
            if old_count != new_count - len(embeddings):
                raise StoreError(
                    f"class {name!r}: the store has {old_count} examples, expected {new_count - len(embeddings)}"
                )
            if row is None:
                cur = self._db.execute(
                    "INSERT INTO classes (name, count, sum, created, updated) VALUES (?, ?, ?, ?, ?)",
                    (name, new_count, sum_blob, now, now),
                )
                class_id = cur.lastrowid
            else:
                class_id = row[0]
                self._db.execute(
                    "UPDATE classes SET count = ?, sum = ?, updated = ? WHERE id = ?",
                    (new_count, sum_blob, now, class_id),
                )
            ids = []
            for emb, sha, fname in zip(embeddings, sha256s, filenames):
                cur = self._db.execute(
                    "INSERT INTO examples (class_id, embedding, sha256, filename, created) VALUES (?, ?, ?, ?, ?)",
                    (class_id, emb.tobytes(), sha, fname, now),
                )
                ids.append(cur.lastrowid)
        return ids

    def remove_class(self, name: str) -> bool:
        """Delete a class and its examples in one transaction; False if there was none."""
        with self._transaction():
            cur = self._db.execute("DELETE FROM classes WHERE name = ?", (name,))
        return cur.rowcount > 0

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
            self.db.execute("ROLLBACK")
        return False


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _lock_exclusive(path: Path):
    """Hold an exclusive advisory lock on ``path`` for as long as the returned file is open."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one process per store is then up to the user
        return None
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise StoreError(f"{path.with_suffix('')}: in use by another imprint serve process") from None
    return f
