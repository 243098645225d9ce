"""Example-level edits on the PostgreSQL store (issue 15): the methods of the SQLite store of
the same names (``add_thumbnails``, ``example_records``, ``remove_example``, ``rename_class``,
``labelled_embeddings``, ``setting``, ``set_setting``), with the same promises, for ``PgStore``
(``serve.store_pg``) to inherit. A thumbnail is the nullable ``imprint_examples.thumbnail``;
a setting is ``setting:<key>`` in ``imprint_meta``.

Each edit is one transaction under the class's row lock, and one that changes a class is
logged and notified like any write, so the other replicas follow it: removing an example
changes the class's sum and count; renaming is the old name gone and the new one there (on the
other replicas the renamed class moves to the end of the class order).
"""

from __future__ import annotations

import time

import numpy as np

from imprinting.classes import normalize_rows
from imprinting.serve.deadline import bounded
from imprinting.serve.integrity import MAX_EXAMPLE_ID


class PgEdits:
    """Mixed into ``PgStore``: uses its ``_transaction`` and ``_log``."""

    @bounded
    def add_thumbnails(self, ids: list[int], jpegs: list[bytes]) -> None:
        """Keep a small JPEG per example (``ids`` from ``add_examples``), in one transaction."""
        with self._transaction() as conn:
            conn.cursor().executemany("UPDATE imprint_examples SET thumbnail = %s WHERE id = %s",
                                      list(zip(jpegs, ids)))

    @bounded
    def example_records(self, name: str) -> list[dict]:
        """Class ``name``'s examples in the order they were added: id, added (Unix time),
        sha256, filename and thumbnail (JPEG bytes, or None for examples stored without one)."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT e.id, e.created, e.sha256, e.filename, e.thumbnail FROM imprint_examples e "
                "JOIN imprint_classes c ON c.id = e.class_id WHERE c.name = %s ORDER BY e.id",
                (name,), binary=True).fetchall()
        return [{"id": i, "added": created, "sha256": sha, "filename": fname, "thumbnail": jpeg}
                for i, created, sha, fname, jpeg in rows]

    @bounded
    def remove_example(self, name: str, example_id: int) -> tuple[np.ndarray, int] | None:
        """Delete one example of class ``name`` and recompute the class's sum and count from
        the remaining examples' stored embeddings (float32 in float64, L2-normalized, summed in
        their stored order: the sum a batch imprint of them gives), in one transaction; the
        class goes with its last example (returns None). ``KeyError``: no such example."""
        if not isinstance(example_id, int) or not 1 <= example_id <= MAX_EXAMPLE_ID:
            raise KeyError(example_id)  # no stored example can have it (SQL integers are 64-bit)
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT c.id FROM imprint_classes c JOIN imprint_examples e ON e.class_id = c.id "
                "WHERE c.name = %s AND e.id = %s FOR UPDATE OF c", (name, int(example_id))).fetchone()
            if row is None:
                raise KeyError(example_id)
            class_id = row[0]
            conn.execute("DELETE FROM imprint_examples WHERE id = %s", (int(example_id),))
            blobs = conn.execute("SELECT embedding FROM imprint_examples WHERE class_id = %s ORDER BY id",
                                 (class_id,), binary=True).fetchall()
            if not blobs:
                conn.execute("DELETE FROM imprint_classes WHERE id = %s", (class_id,))
                self._log(conn, class_id, name, "delete", now)
                return None
            e = np.stack([np.frombuffer(b, dtype="<f4") for (b,) in blobs]).astype(np.float64)
            total = normalize_rows(e).sum(axis=0)
            conn.execute("UPDATE imprint_classes SET count = %s, sum = %s WHERE id = %s",
                         (len(blobs), np.ascontiguousarray(total, dtype="<f8").tobytes(), class_id))
            self._log(conn, class_id, name, "edit", now)
        return total, len(blobs)

    @bounded
    def rename_class(self, name: str, new_name: str) -> bool:
        """Rename a stored class (its examples follow: they reference its id); False if there
        was none. A ``new_name`` that is taken is ``ClassTaken`` (a ``StoreError``) and changes nothing."""
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute("UPDATE imprint_classes SET name = %s WHERE name = %s RETURNING id",
                               (new_name, name)).fetchone()
            if row is not None:
                self._log(conn, row[0], name, "rename", now)  # the old name: gone
                self._log(conn, row[0], new_name, "rename", now)  # the new one: there
        return row is not None

    @bounded
    def labelled_embeddings(self) -> tuple[list[str], np.ndarray]:
        """Every stored example's class name and float32 embedding, by class then id."""
        with self._transaction() as conn:
            rows = conn.execute("SELECT c.name, e.embedding FROM imprint_examples e JOIN imprint_classes c "
                                "ON c.id = e.class_id ORDER BY c.id, e.id", binary=True).fetchall()
        if not rows:
            return [], np.zeros((0, self.dim), np.float32)
        return [n for n, _ in rows], np.stack([np.frombuffer(b, dtype="<f4") for _, b in rows])

    @bounded
    def setting(self, key: str) -> str | None:
        """A value kept in ``imprint_meta`` under ``setting:<key>`` (e.g. the calibration), or None.
        Replicas read it at start: one that changes it reaches the others when they restart."""
        with self._transaction() as conn:
            row = conn.execute("SELECT value FROM imprint_meta WHERE key = %s", (f"setting:{key}",)).fetchone()
        return row[0] if row else None

    @bounded
    def set_setting(self, key: str, value: str) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO imprint_meta (key, value) VALUES (%s, %s) "
                         "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (f"setting:{key}", value))
