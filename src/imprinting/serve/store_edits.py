"""Example-level edits of the SQLite class store (issue 15), as a mixin of ``serve.store.Store``:
thumbnails, one example out (the class recomputed from the rest), renaming, every stored
example's embedding (for calibration) and small settings kept in ``meta``. The PostgreSQL
store has the same methods in ``serve.store_pg_edits``."""

from __future__ import annotations

import time

import numpy as np

from imprinting.classes import normalize_rows
from imprinting.serve.integrity import MAX_EXAMPLE_ID


class StoreEdits:
    """Needs ``self._db`` (a sqlite3 connection), ``self._writing(what)`` and
    ``self._reading(what)`` (the store's lock, its errors as ``StoreError``) and ``self.dim``."""

    # A small JPEG per example lives in ``examples.thumbnail``, a column added on first use
    # (stores of earlier versions have none: their examples' thumbnails are NULL).
    def _ensure_thumbnails(self) -> None:
        if not getattr(self, "_thumbnails_ready", False):
            with self._reading("the examples table"):
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(examples)")}
            if "thumbnail" not in columns:
                with self._writing("adding the thumbnail column"):
                    self._db.execute("ALTER TABLE examples ADD COLUMN thumbnail BLOB")
            self._thumbnails_ready = True

    def add_thumbnails(self, ids: list[int], jpegs: list[bytes]) -> None:
        """Keep a small JPEG per example (``ids`` from ``add_examples``), in one transaction."""
        self._ensure_thumbnails()
        with self._writing("the thumbnails"):
            self._db.executemany("UPDATE examples SET thumbnail = ? WHERE id = ?", list(zip(jpegs, ids)))

    def example_records(self, name: str) -> list[dict]:
        """Class ``name``'s examples in the order they were added: id, added (Unix time),
        sha256, filename and thumbnail (JPEG bytes, or None for examples stored without one)."""
        self._ensure_thumbnails()
        with self._reading(f"the examples of class {name!r}"):
            rows = self._db.execute(
                "SELECT e.id, e.created, e.sha256, e.filename, e.thumbnail FROM examples e "
                "JOIN classes c ON c.id = e.class_id WHERE c.name = ? ORDER BY e.id",
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
        if not isinstance(example_id, int) or not 1 <= example_id <= MAX_EXAMPLE_ID:
            raise KeyError(example_id)  # no stored example can have it (SQL integers are 64-bit)
        with self._writing(f"removing example {example_id} of class {name!r}"):
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
        was none. Raises ``ClassTaken`` (a ``StoreError``) if ``new_name`` is taken."""
        with self._writing(f"renaming class {name!r} to {new_name!r}"):
            cur = self._db.execute("UPDATE classes SET name = ?, updated = ? WHERE name = ?",
                                   (new_name, time.time(), name))
        return cur.rowcount > 0

    def labelled_embeddings(self) -> tuple[list[str], np.ndarray]:
        """Every stored example's class name and float32 embedding, by class then id."""
        with self._reading("the stored examples"):
            rows = self._db.execute(
                "SELECT c.name, e.embedding FROM examples e JOIN classes c ON c.id = e.class_id ORDER BY c.id, e.id"
            ).fetchall()
        if not rows:
            return [], np.zeros((0, self.dim), np.float32)
        return [n for n, _ in rows], np.stack([np.frombuffer(b, dtype="<f4") for _, b in rows])

    def setting(self, key: str) -> str | None:
        """A value kept in ``meta`` under ``setting:<key>`` (e.g. the calibration), or None."""
        with self._reading(f"the setting {key!r}"):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"setting:{key}",)).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key``, in one transaction (the old value or the new one, never a mix)."""
        with self._writing(f"the setting {key!r}"):
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"setting:{key}", value))
