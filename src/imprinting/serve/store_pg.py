"""The class store on PostgreSQL: several ``imprint serve`` replicas over one database.

The same contents and promises as the SQLite store (``serve.store``): the model's fingerprint,
each class's float64 sum of L2-normalized embeddings and its example count, every example's
float32 embedding, the SHA-256 of its image and its upload name; an upload is one transaction,
acknowledged (returned) only once PostgreSQL has committed it (``synchronous_commit`` is never
left ``off``); a store opens only for the model it was made with and is checked at open.

Tables (all named ``imprint_*``, so a store can live in a database that holds other things):
  ``imprint_meta``      the model, the dim, the schema version, the store's id; settings
                        (``setting:<key>``, e.g. the calibration)
  ``imprint_classes``   name, count, sum (bytea, little-endian float64), the ``version``: the
                        change number of its last change
  ``imprint_examples``  embedding (bytea, little-endian float32), sha256, filename, thumbnail
                        (a small JPEG, or NULL: ``store_pg_edits``)
  ``imprint_clock``     one row: the last change number
  ``imprint_changes``   one row per committed change (seq, class name, kind): what a replica
                        that was away reads to catch up (``serve.follow``)

The concurrency rule. A write locks its class's row (``SELECT ... FOR UPDATE``) and adds the
upload to the sum and count *the database holds* (``add_to_class``), not to what the writing
replica believed; then, last, it takes the next change number (``UPDATE imprint_clock SET seq =
seq + 1``, a row lock held to the commit), logs the change, sends ``NOTIFY`` and commits. So two
replicas writing one class queue on its row and neither loses nor doubles the other's examples;
writes to different classes run in parallel until that last step; and change numbers are gapless
and in commit order, so a replica that has applied changes 1..N has missed none of them.
Every write takes the class row first and the clock second: no deadlocks.

A database that cannot be reached (down, restarting, network) is ``StoreUnavailable``, a
``StoreError``: the service answers 503 and nothing changes. One that hangs is the same within
``timeout`` seconds: every public call runs under a deadline (``serve.deadline``), and each
connection also has server-side statement, lock and idle-transaction timeouts.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from imprinting.classes import normalize_rows
from imprinting.serve.contract import StoredClass, StoredExample, checked_upload
from imprinting.serve.deadline import Deadline, bounded
from imprinting.serve.integrity import (
    ClassTaken,
    StoreError,
    StoreUnavailable,
    check_count,
)
from imprinting.serve.store_pg_edits import PgEdits
from imprinting.serve.store_pg_schema import (
    LOG_CHANGE,
    SCHEMA,
    check_meta,
    configure,
    problems,
)
from imprinting.serve.urls import redact

__all__ = ["PgStore", "PgStoredClass", "StoreUnavailable", "StoreError"]

KEEP_CHANGES = 100_000  # change-log rows kept; a replica away for longer reloads every class's version
RETRY_SECONDS = 0.5  # after a failed connection, requests are refused at once for this long
LOCK_KEY = 0x1A9B_5107  # pg_advisory_xact_lock key: one replica at a time creates or upgrades the tables
DEADLINE_SECONDS = 3.0  # the longest a store call may take before the caller gets StoreUnavailable


@dataclass
class PgStoredClass(StoredClass):
    version: int = 0  # the change number of the class's last change


class PgStore(PgEdits):
    """The classes taught to one model, in a PostgreSQL database shared by any number of replicas.
    The example-level edits (thumbnails, one example out, renaming) are in ``serve.store_pg_edits``."""

    shared = True  # other processes write here too: the service follows them (serve.follow)

    def __init__(self, url: str, dim: int, fingerprint: str, description: str = "", *,
                 timeout: float = 1.0, connect_timeout: float = 5.0, deadline: float = DEADLINE_SECONDS):
        """Connect to ``url`` (``postgresql://user@host:port/dbname``; a password is best given
        by ``PGPASSWORD`` or ``~/.pgpass``), create the tables when missing, and check that the
        store belongs to this model and is whole. ``timeout``: how long a request waits for a
        connection before it is refused with ``StoreUnavailable``. ``deadline``: how long any
        call may take in all before the caller gets ``StoreUnavailable`` (``serve.deadline``)."""
        try:  # optional: psycopg (pip install 'imprinting[postgres]')
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise StoreError(f"a PostgreSQL store needs psycopg ({exc}): pip install 'imprinting[postgres]'") from None
        self._psycopg = psycopg
        self.url, self.path, self.dim = url, redact(url), int(dim)
        self.snapshot_seq = 0
        self._pool = self._deadline = None
        self._down: tuple[float, str] | None = None  # (until when, why): fail at once, not after `timeout`
        # keepalives: a peer that vanished (a network cut, a host gone) is found in ~10 s, not hours
        options = {"autocommit": True, "connect_timeout": max(1, round(connect_timeout)),
                   "application_name": "imprint serve", "keepalives": 1, "keepalives_idle": 5,
                   "keepalives_interval": 2, "keepalives_count": 3}
        try:
            psycopg.connect(url, **options).close()  # the clear reason (no such database, password), not a pool timeout
        except psycopg.Error as exc:
            raise StoreUnavailable(f"{self.path}: cannot connect to PostgreSQL ({_reason(exc)})") from None
        # reconnect_timeout: a failed reconnection is given up after 1 s, so that the next request
        # tries at once instead of waiting out the pool's doubling back-off: writes resume as soon
        # as the database is back, however long it was away.
        self._pool = ConnectionPool(url, kwargs=options, min_size=1, max_size=2, timeout=timeout, open=False,
                                    configure=configure, check=ConnectionPool.check_connection,
                                    reconnect_timeout=1.0, name="imprint-store")
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
            with self._transaction() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                for statement in SCHEMA.split(";"):
                    conn.execute(statement)
                self.store_id = check_meta(conn, self.path, self.dim, fingerprint, description)
            self.channel = f"imprint_{self.store_id}"
            problems = self.verify()
            if problems:
                raise StoreError(f"{self.path}: the store is damaged: " + "; ".join(problems))
            self._deadline = Deadline(deadline, self.path)  # from here on, every public call is bounded
        except BaseException as exc:
            self.close()
            if isinstance(exc, self._psycopg.Error):
                raise StoreError(f"{self.path}: not a usable class store ({_reason(exc)})") from None
            raise

    def verify(self) -> list[str]:
        """What is wrong with the store, checked in the database (empty when it is whole):
        counts that differ from the examples, sums and embeddings of the wrong size, versions
        ahead of the clock. Run at open: a scan of both tables (the whole open took 0.4 s with
        100,000 classes of one example: docs/scaling.md)."""
        with self._transaction() as conn:
            return problems(conn, self.dim)

    # -- reading ---------------------------------------------------------------
    @bounded
    def classes(self) -> list[PgStoredClass]:
        """Every stored class, in the order it was created; ``snapshot_seq`` becomes the change
        number this list is as of (what a follower tails from)."""
        with self._transaction(snapshot=True) as conn:
            seq = conn.execute("SELECT seq FROM imprint_clock").fetchone()[0]
            rows = conn.execute("SELECT name, sum, count, version FROM imprint_classes ORDER BY id",
                                binary=True).fetchall()
        self.snapshot_seq = seq
        return [PgStoredClass(n, _f8(s), c, v) for n, s, c, v in rows]

    @bounded
    def get_class(self, name: str) -> PgStoredClass | None:
        return self.class_as_of(name)[0]

    @bounded
    def class_as_of(self, name: str) -> tuple[PgStoredClass | None, int]:
        """(class ``name`` as stored or None, the change number that is true as of), from one
        snapshot: what a replica applies when it finds itself behind (``serve.follow``)."""
        with self._transaction(snapshot=True) as conn:
            seq = conn.execute("SELECT seq FROM imprint_clock").fetchone()[0]
            row = conn.execute("SELECT name, sum, count, version FROM imprint_classes WHERE name = %s",
                               (name,), binary=True).fetchone()
        return (None if row is None else PgStoredClass(row[0], _f8(row[1]), row[2], row[3])), seq

    def state(self) -> dict:
        """``{"state": "ok"}``, or ``{"state": "degraded", "detail": why}`` while a call is past
        its deadline or the last one could not reach the database (read without waiting)."""
        if self._pool is None:
            return {"state": "closed"}
        hung = self._deadline.hung_for() if self._deadline is not None else None
        if hung is not None:
            return {"state": "degraded", "detail": f"the database has not answered for {hung:.0f} s"}
        down = self._down
        if down is not None:
            return {"state": "degraded", "detail": down[1]}
        return {"state": "ok"}

    @bounded
    def examples(self, name: str) -> list[StoredExample]:
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT e.id, e.embedding, e.sha256, e.filename FROM imprint_examples e JOIN imprint_classes c "
                "ON c.id = e.class_id WHERE c.name = %s ORDER BY e.id", (name,), binary=True,
            ).fetchall()
        return [StoredExample(i, np.frombuffer(b, dtype="<f4").copy(), s, f) for i, b, s, f in rows]

    @bounded
    def sequence(self) -> int:
        """The last change number."""
        with self._transaction() as conn:
            return conn.execute("SELECT seq FROM imprint_clock").fetchone()[0]

    @bounded
    def changes_since(self, seq: int, limit: int = 10_000) -> list[tuple[int, str]]:
        """(change number, class name) of the changes after ``seq``, in order."""
        with self._transaction() as conn:
            return conn.execute("SELECT seq, name FROM imprint_changes WHERE seq > %s ORDER BY seq LIMIT %s",
                                (seq, limit)).fetchall()

    @bounded
    def versions(self) -> tuple[int, dict[str, int]]:
        """(the last change number, {class name: version}), from one snapshot."""
        with self._transaction(snapshot=True) as conn:
            seq = conn.execute("SELECT seq FROM imprint_clock").fetchone()[0]
            return seq, dict(conn.execute("SELECT name, version FROM imprint_classes").fetchall())

    # -- writing ---------------------------------------------------------------
    @bounded
    def add_examples(self, name: str, embeddings: np.ndarray, new_sum: np.ndarray, new_count: int,
                     sha256s: list[str], filenames: list[str]) -> list[int]:
        """As ``Store.add_examples``: record an upload and the class's new sum and count, in one
        transaction; ``new_count - len(embeddings)`` must be the count the store holds now, else
        nothing is written (``StoreError``). For writers on several replicas, ``add_to_class``."""
        embeddings = checked_upload(self.dim, name, embeddings, sha256s, filenames)
        check_count(self.path, name, new_count)  # as the SQLite store: the same contract
        new_sum = np.ascontiguousarray(new_sum, dtype="<f8")
        if new_sum.shape != (self.dim,) or not np.isfinite(new_sum).all():
            raise ValueError(f"class {name!r}: the sum must be finite and ({self.dim},)")
        sum_blob = new_sum.tobytes()
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute("SELECT id, count FROM imprint_classes WHERE name = %s FOR UPDATE", (name,)).fetchone()
            old_count = row[1] if row else 0
            if old_count != new_count - len(embeddings):
                raise StoreError(f"class {name!r}: the store has {old_count} examples, "
                                 f"expected {new_count - len(embeddings)}")
            if row is None:
                row = self._insert_class(conn, name, new_count, sum_blob, now)
                if row is None:
                    raise StoreError(f"class {name!r}: created by another writer meanwhile")
            else:
                conn.execute("UPDATE imprint_classes SET count = %s, sum = %s WHERE id = %s",
                             (new_count, sum_blob, row[0]))
            ids = self._insert_examples(conn, row[0], embeddings, sha256s, filenames, now)
            self._log(conn, row[0], name, "add", now)
        return ids

    @bounded
    def add_to_class(self, name: str, embeddings: np.ndarray, sha256s: list[str],
                     filenames: list[str]) -> tuple[list[int], PgStoredClass, bool]:
        """Add an upload to class ``name`` as the database holds it (created when missing), in
        one transaction under the class's row lock: the sum gains the examples' L2-normalized
        float64 embeddings, the count their number (what ``ClassTable.extend`` does, bit for
        bit). Returns (the examples' ids, the class as committed, whether this created it)."""
        embeddings = checked_upload(self.dim, name, embeddings, sha256s, filenames)
        e = embeddings.astype(np.float64)
        delta = normalize_rows(e).sum(axis=0)
        now = time.time()
        with self._transaction() as conn:
            select = "SELECT id, count, sum FROM imprint_classes WHERE name = %s FOR UPDATE"
            row = conn.execute(select, (name,), binary=True).fetchone()
            new = None if row else self._insert_class(conn, name, len(e), delta.astype("<f8").tobytes(), now)
            if new is not None:
                class_id, total, count = new[0], delta, len(e)
            else:
                row = row or conn.execute(select, (name,), binary=True).fetchone()  # another writer created it
                class_id, total, count = row[0], _f8(row[2]) + delta, row[1] + len(e)
                conn.execute("UPDATE imprint_classes SET count = %s, sum = %s WHERE id = %s",
                             (count, total.astype("<f8").tobytes(), class_id))
            ids = self._insert_examples(conn, class_id, embeddings, sha256s, filenames, now)
            seq = self._log(conn, class_id, name, "add", now)
        return ids, PgStoredClass(name, total, count, seq), new is not None

    @bounded
    def remove_class(self, name: str) -> bool:
        """Delete a class and its examples in one transaction; False if there was none."""
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute("DELETE FROM imprint_classes WHERE name = %s RETURNING id", (name,)).fetchone()
            if row is not None:
                self._log(conn, row[0], name, "delete", now)
        return row is not None

    def close(self) -> None:
        if self._deadline is not None:
            self._deadline.close()
        if self._pool is not None:
            self._pool.close(timeout=2.0)
            self._pool = None

    # -- helpers ---------------------------------------------------------------
    @staticmethod
    def _insert_class(conn, name, count, sum_blob, now):
        """The new class's (id,), or None when another transaction created it first."""
        return conn.execute(
            "INSERT INTO imprint_classes (name, count, sum, created, updated) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (name) DO NOTHING RETURNING id", (name, count, sum_blob, now, now),
        ).fetchone()

    @staticmethod
    def _insert_examples(conn, class_id, embeddings, sha256s, filenames, now) -> list[int]:
        cur = conn.cursor()
        cur.executemany(
            "INSERT INTO imprint_examples (class_id, embedding, sha256, filename, created) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            [(class_id, e.tobytes(), s, f, now) for e, s, f in zip(embeddings, sha256s, filenames)],
            returning=True,
        )
        ids = []
        while True:
            ids.append(cur.fetchone()[0])
            if not cur.nextset():
                return ids

    def _log(self, conn, class_id: int, name: str, kind: str, now: float) -> int:
        seq = conn.execute(LOG_CHANGE, {"name": name, "kind": kind, "at": now, "id": class_id,
                                        "channel": self.channel}).fetchone()[0]
        if seq % 1000 == 0:
            conn.execute("DELETE FROM imprint_changes WHERE seq <= %s", (seq - KEEP_CHANGES,))
        return seq

    @contextmanager
    def _transaction(self, snapshot: bool = False):
        """A pooled connection in one transaction (committed at the end, rolled back on any
        error); ``snapshot``: every statement sees the same snapshot (REPEATABLE READ).
        The driver's errors become ``StoreUnavailable`` (no connection) or ``StoreError``."""
        psycopg = self._psycopg
        from psycopg_pool import PoolClosed, PoolTimeout  # optional: imported by __init__ already

        if self._pool is None:
            raise StoreError(f"{self.path}: the store is closed")
        if self._down is not None and time.monotonic() < self._down[0]:
            raise StoreUnavailable(self._down[1])  # failed just now: answer at once, the lock is held
        try:
            with self._pool.connection() as conn, conn.transaction():
                if snapshot:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                yield conn
            self._down = None
        except (PoolTimeout, PoolClosed, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            why = f"{self.path}: the database cannot be reached ({_reason(exc)})"
            self._down = (time.monotonic() + RETRY_SECONDS, why)
            raise StoreUnavailable(why) from None
        except psycopg.errors.UniqueViolation as exc:
            raise ClassTaken(f"{self.path}: the name is taken by another class ({_reason(exc)})") from None
        except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as exc:  # the session timeouts
            raise StoreUnavailable(f"{self.path}: the database is too slow now ({_reason(exc)})") from None
        except psycopg.Error as exc:
            raise StoreError(f"{self.path}: {_reason(exc)}") from None


def _f8(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f8").copy()


def _reason(exc: BaseException) -> str:
    """The driver's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__
