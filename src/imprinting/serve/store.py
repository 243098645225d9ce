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

One service process owns a store: ``Store`` holds an exclusive advisory lock (``flock``) on
the database file itself, so a hard link, a symlink or any other path to the same file finds
it taken (the kernel drops the lock when the process dies, even by kill -9), because the
service keeps the classes in memory and a second writer would make the two disagree.
Within the process, every call holds the store's own lock (one SQLite connection serves all
threads, one transaction at a time); the service never holds its in-memory lock around a call.

At open the store checks itself (``PRAGMA quick_check``, the model fingerprint, every class's
count and sum against its examples: ``serve.integrity``) and refuses damage with a
``StoreError`` naming it. Every write maps what the disk refuses (full, read-only, I/O
error) to a ``StoreError`` with nothing written.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from imprinting.serve.contract import StoredClass, StoredExample, checked_upload
from imprinting.serve.integrity import (
    ClassTaken,
    ExampleSums,
    StoreError,
    check_count,
    check_meta,
    check_rows,
)
from imprinting.serve.store_edits import StoreEdits

__all__ = ["Store", "StoreError", "ClassTaken", "StoredClass", "StoredExample", "SCHEMA_VERSION"]

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


class Store(StoreEdits):
    """The classes taught to one model through the service (``serve.contract.ClassStore``)."""

    shared = False  # one process owns the file (its flock): nothing to follow

    def __init__(self, path: str | os.PathLike, dim: int, fingerprint: str, description: str = ""):
        self.path = Path(path)
        self.dim = dim
        self._db = self._lock_file = None
        self._lock = threading.RLock()  # one transaction at a time on the shared connection
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = lock_file(self.path)
            # the resolved path: every name of the file shares one -wal file
            self._db = sqlite3.connect(os.path.realpath(self.path), isolation_level=None, check_same_thread=False,
                                       timeout=30)
            problems = [r[0] for r in self._db.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise StoreError(f"{self.path}: damaged store (SQLite quick_check: {'; '.join(problems)})")
            self._check_tables()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._transaction():
                for statement in _statements(SCHEMA):  # not executescript: it would commit
                    self._db.execute(statement)
                self._check_meta(dim, fingerprint, description)
            self._check_rows()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"{self.path}: not a usable class store: damaged, or not a SQLite file ({exc})") from None
        except OSError as exc:
            self.close()
            raise StoreError(f"{self.path}: cannot open the store ({exc.strerror or exc})") from None
        except BaseException:
            self.close()
            raise

    def _check_tables(self) -> None:
        """Refuse another application's SQLite file rather than add tables to it."""
        problem = _foreign(self.path, self._db)
        if problem:
            raise StoreError(problem)

    def _check_meta(self, dim: int, fingerprint: str, description: str) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        holds = self._db.execute("SELECT EXISTS (SELECT 1 FROM classes) OR EXISTS (SELECT 1 FROM examples)").fetchone()[0]
        if check_meta(str(self.path), meta, bool(holds), dim, fingerprint, SCHEMA_VERSION):
            now = str(time.time())
            rows = {"schema": str(SCHEMA_VERSION), "dim": str(dim), "model": fingerprint,
                    "model_description": description, "created": now}
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", rows.items())

    def _check_rows(self) -> None:
        """Every class's count and sum against its stored examples (``integrity.check_rows``)."""
        sums = ExampleSums(str(self.path), self.dim)
        for class_id, blob in self._db.execute("SELECT class_id, embedding FROM examples"):
            sums.add(class_id, blob)
        rows = self._db.execute("SELECT id, name, sum, count FROM classes ORDER BY id")
        check_rows(str(self.path), self.dim, rows, sums)

    # -- reading ---------------------------------------------------------------
    def classes(self) -> list[StoredClass]:
        """Every stored class, in the order it was created."""
        with self._reading("the classes"):
            rows = self._db.execute("SELECT name, sum, count FROM classes ORDER BY id").fetchall()
        return [StoredClass(name, np.frombuffer(blob, dtype="<f8").copy(), count) for name, blob, count in rows]

    def get_class(self, name: str) -> StoredClass | None:
        """Class ``name`` as stored, or None."""
        with self._reading(f"class {name!r}"):
            row = self._db.execute("SELECT name, sum, count FROM classes WHERE name = ?", (name,)).fetchone()
        return None if row is None else StoredClass(row[0], np.frombuffer(row[1], dtype="<f8").copy(), row[2])

    def examples(self, name: str) -> list[StoredExample]:
        with self._reading(f"the examples of class {name!r}"):
            rows = self._db.execute(
                "SELECT e.id, e.embedding, e.sha256, e.filename FROM examples e JOIN classes c ON c.id = e.class_id "
                "WHERE c.name = ? ORDER BY e.id",
                (name,),
            ).fetchall()
        return [StoredExample(i, np.frombuffer(b, dtype="<f4").copy(), s, f) for i, b, s, f in rows]

    def state(self) -> dict:
        """Whether the store can be used now: ``{"state": "ok"}`` while it is open (a local
        file: a write the disk refuses is answered for that write alone)."""
        return {"state": "ok" if self._db is not None else "closed"}

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
        embeddings = checked_upload(self.dim, name, embeddings, sha256s, filenames)
        check_count(str(self.path), name, new_count)
        new_sum = np.ascontiguousarray(new_sum, dtype="<f8")
        if new_sum.shape != (self.dim,) or not np.isfinite(new_sum).all():
            raise ValueError(f"class {name!r}: the sum and the embeddings must be finite, (dim,) and (n, dim)")
        sum_blob = new_sum.tobytes()
        now = time.time()
        with self._writing(f"the upload to class {name!r}"):
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
        with self._writing(f"deleting class {name!r}"):
            cur = self._db.execute("DELETE FROM classes WHERE name = ?", (name,))
        return cur.rowcount > 0

    def close(self) -> None:
        """Close the database, then release the lock (in this order: closing another
        descriptor of the file first would drop SQLite's own POSIX locks)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lock_file is not None:
                os.close(self._lock_file)
                self._lock_file = None

    def _transaction(self):
        return _Transaction(self._db)

    @contextmanager
    def _writing(self, what: str):
        """One write transaction, under the store's lock; what the disk refuses (full,
        read-only, I/O error, a damaged page) becomes a ``StoreError`` naming it, with nothing
        written. A unique name taken is ``ClassTaken``."""
        with self._lock:
            if self._db is None:
                raise StoreError(f"{self.path}: the store is closed")
            try:
                with self._transaction():
                    yield
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" in str(exc) and "name" in str(exc):
                    raise ClassTaken(f"{self.path}: {what}: the name is taken by another class") from None
                raise StoreError(f"{self.path}: the disk refused {what} ({exc})") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: the disk refused {what} ({exc})") from exc

    @contextmanager
    def _reading(self, what: str):
        """Reads under the store's lock; a failed read (I/O error, damaged page) is a
        ``StoreError`` naming what was read."""
        with self._lock:
            if self._db is None:
                raise StoreError(f"{self.path}: the store is closed")
            try:
                yield
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: could not read {what} ({exc})") from exc


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return False
            except BaseException:
                self._rollback()
                raise
        self._rollback()
        return False

    def _rollback(self) -> None:
        if self.db.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:  # the original error is the one to report
                pass


def _foreign(path, db: sqlite3.Connection) -> str | None:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    tables = {t for t in tables if not t.startswith("sqlite_")}
    if tables and not ({"meta", "classes", "examples"} >= tables and "meta" in tables):
        return (f"{path}: not a class store of imprinting (another application's SQLite file? "
                f"its tables: {', '.join(sorted(tables))})")
    return None


def foreign_tables(path: str | os.PathLike) -> str | None:
    """Why the existing SQLite file ``path`` is not a class store (its tables are another
    application's), or None (a store, an empty file, or not SQLite at all: ``Store`` says
    more). Opened read-only: nothing is written."""
    with open(path, "rb") as f:
        if f.read(16) != b"SQLite format 3\0":
            return None
    try:
        db = sqlite3.connect(f"file:{os.path.realpath(path)}?mode=ro", uri=True)
        try:
            return _foreign(path, db)
        finally:
            db.close()
    except sqlite3.Error:
        return None


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def lock_file(path: Path) -> int | None:
    """Open the database file (creating it) and hold an exclusive ``flock`` on it for as long
    as the returned descriptor is open. The lock is on the file, not its name: every hard
    link, symlink or other path to it finds it held. ``None`` where there is no ``fcntl``
    (Windows: one process per store is then up to the user)."""
    try:  # optional: fcntl is POSIX-only (none on Windows)
        import fcntl
    except ImportError:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock_holder(fd)
        os.close(fd)
        who = f"process {holder}" if holder else "another process"
        raise StoreError(f"{path}: in use by another imprint serve process ({who} holds its lock; "
                         "one server per store)") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_holder(fd: int) -> int | None:
    """The pid holding a ``flock`` on the file behind ``fd`` (Linux: /proc/locks), or None."""
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for exact in (True, False):  # some file systems show another device number there
        for line in lines:
            parts = line.split()
            if len(parts) >= 6 and parts[1] == "FLOCK" and "->" not in parts:
                if parts[5] == ident if exact else parts[5].endswith(f":{st.st_ino}"):
                    return int(parts[4]) if parts[4].isdigit() else None
    return None
