"""The service's writes: teaching, deleting, the example-level edits (list a class's examples
with thumbnails, remove one, rename a class); calibration is ``serve.calibrating``, a part of
this one. ``ServiceEdits`` is a part of
``serve.service.Service`` (its base class), split off where reading ends and changing begins.

Every write follows one rule: under ``_writes`` (one write at a time in this process), the
store commits first, outside the lock on the classes in memory; then memory takes what the store
committed (``apply_committed`` / ``_sync``). A change the store refused, or did not find (a class another
replica deleted or renamed meanwhile), changes nothing in memory but the class it found behind,
which is reloaded from the store. The store's side is in ``serve.store`` / ``serve.store_pg``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch

from imprinting.calibration import CalibrationError
from imprinting.classes import ClassSnapshot
from imprinting.names import confusable_with
from imprinting.rows import normalize_rows
from imprinting.serve.calibrating import ServiceCalibration
from imprinting.serve.store_answers import store_error
from imprinting.serve.contract import (
    MAX_COUNT,
    MAX_EXAMPLE_ID,
    ClassTaken,
    StoredClass,
    StoreError,
)
from imprinting.serve.thumbnails import data_url, iso_time, jpeg_thumbnail
from imprinting.serve.validation import (
    ApiError,
    Upload,
    check_class_name,
    check_uploads,
)
from imprinting.suspects import find_suspects, leave_one_out_probabilities

WRITE_WAIT_SECONDS = 4.0  # the longest a write waits for the one before it (a store call is bounded too)
THUMBNAIL_PIXELS = 128  # the longer side of the JPEG kept per example for the page


def check_example_id(example_id) -> int:
    """Example ids are whole numbers from 1 to 2**63 - 1 (SQL 64-bit integers): 422 otherwise."""
    if isinstance(example_id, bool) or not isinstance(example_id, int) or not 1 <= example_id <= MAX_EXAMPLE_ID:
        raise ApiError(422, "invalid_example_id", f"example id {str(example_id)[:40]!r} is not a whole number from 1 "
                                                  f"to {MAX_EXAMPLE_ID} (ids come from the list of a class's examples)")
    return example_id


class ServiceEdits(ServiceCalibration):
    """The writes of ``Service`` (see the module): uses its model, store, locks and ``apply_committed``."""

    def teach(self, name: str, uploads: Sequence[Upload]) -> dict:
        """Create class ``name`` from the uploads, or add them to it; acknowledged (returned)
        only once the store has committed them. ``created`` tells the two apart (the app
        answers 201 or 200). ``seconds``: from this call to the commit; ``embed_seconds``:
        decoding and embedding."""
        start = time.perf_counter()
        check_class_name(name)
        if name in self.model_classes:
            raise ApiError(409, "read_only_class", f"class {name!r} comes from the model file; "
                                                   "the service adds examples only to classes it created")
        self._check_not_confusable(name)  # before the work of embedding; again at the commit
        check_uploads(uploads, self.max_images)
        with self.admission.admit(len(uploads)):
            embeddings, shas, names, images = self._read_and_embed(uploads)
        embedded = time.perf_counter()
        body = self._commit(name, embeddings, shas, names)
        self.save_thumbnails(body["example_ids"], images)
        body["seconds"] = round(time.perf_counter() - start, 4)
        body["embed_seconds"] = round(embedded - start, 4)
        return body


    def delete(self, name: str) -> dict:
        """Delete a class taught through the service, with its examples: from the store
        first (durable), then from memory. The model file's classes are protected."""
        check_class_name(name)
        with self._writing():
            with self.lock:
                self._require(name)
                if name in self.model_classes:
                    kind = "an imprinted class of the model file" if self.model.is_imprinted(name) else "a base class"
                    raise ApiError(409, "protected_class", f"class {name!r} is {kind} and cannot be deleted here")
            try:
                found = self.store.remove_class(name)
            except StoreError as exc:
                raise store_error(f"class {name!r} was not deleted, nothing changed", exc) from None
            self._sync(name, None)
            self.calibration_after(lambda kept: kept.without_class(name))
            if not found:
                raise ApiError(404, "unknown_class", f"no class named {name!r} (another replica deleted or renamed it)")
            with self.lock:
                left = self.model.num_classes
        return {"deleted": name, "classes": left}


    def _commit(self, name: str, embeddings: torch.Tensor, shas: list[str], names: list[str]) -> dict:
        """Commit the upload to the store, then teach memory what the store committed (a
        refused upload changes nothing). Returns the class as it is after this upload, with
        ``created`` and ``example_ids``."""
        e = embeddings.numpy()
        with self._writing():
            self._check_not_confusable(name)
            with self.lock:
                created = not self.model.has_class(name)
                count = 0 if created else self._count(name)
                if count + len(e) > MAX_COUNT:
                    raise ApiError(409, "class_full", f"class {name!r} has {count} examples; the limit is {MAX_COUNT}")
                old_sum = None if created else self._state(name)[0]
            try:
                if self.follower is None:  # one process: the new sum is the old one plus the upload's
                    delta = normalize_rows(e.astype(np.float32).astype(np.float64)).sum(axis=0)
                    stored = StoredClass(name, delta if old_sum is None else old_sum + delta, count + len(e))
                    ids = self.store.add_examples(name, e, stored.sum, stored.count, shas, names)
                    version = None
                else:  # replicas: the database adds the upload to what it holds; memory takes that
                    ids, stored, created = self.store.add_to_class(name, e, shas, names)
                    version = stored.version
            except StoreError as exc:
                raise store_error("the upload was not saved, nothing changed", exc,
                                  check="GET /classes/{name}/examples lists each example's sha256") from None
            self.apply_committed([(name, stored, version)])
            self.calibration_after(lambda kept: kept.with_examples(name, e))
        return {**self._describe(name, stored.count), "created": created, "added": len(ids), "example_ids": ids}

    @contextmanager
    def _writing(self):
        """This process's writes one at a time; one that cannot start within
        ``WRITE_WAIT_SECONDS`` (the store is slow or hung) is answered 503."""
        if not self._writes.acquire(timeout=WRITE_WAIT_SECONDS):
            raise store_error(f"the store is busy with an earlier write for over {WRITE_WAIT_SECONDS:g} s; "
                              "nothing changed")
        try:
            yield
        finally:
            self._writes.release()

    def _check_not_confusable(self, name: str, renaming: str | None = None) -> None:
        """409 when a new class name looks like an existing one (Unicode TR39 skeletons, e.g.
        a Cyrillic 'а' for a Latin 'a', or a name differing only in case: ``imprinting.names``).
        The names are copied under the lock and compared outside it (0.1 s at 100,000 classes)."""
        with self.lock:
            if self.model.has_class(name):
                return
            names = [n for n in self.model.class_names if n != renaming]
        other = confusable_with(name, names)
        if other is not None:
            raise ApiError(409, "confusable_name", f"class name {name!r} looks like the existing class {other!r} "
                                                   "(the same letters in another case, or characters that read "
                                                   "alike); use that one or another name")

    # -- example-level edits ------------------------------------------------------------
    def examples(self, name: str) -> dict:
        """Class ``name``'s stored examples, oldest first: id, added (UTC, ISO 8601), SHA-256 of
        the image bytes, upload name and a JPEG thumbnail as a data URL (None for examples
        stored before thumbnails were kept). A model file's class has none here."""
        check_class_name(name)
        self.wait_for_thumbnails()
        with self.lock:
            self._require(name)
        source = "model" if name in self.model_classes else "store"
        try:
            records = [] if source == "model" else self.store.example_records(name)
            stored = [] if source == "model" else self.store.examples(name)
        except StoreError as exc:
            raise store_error("the store could not be read", exc, write=False) from None
        looks = self._suspects(name, stored)
        return {"name": name, "source": source,
                "examples": [{"id": r["id"], "added": iso_time(r["added"]), "sha256": r["sha256"],
                              "filename": r["filename"], "thumbnail": data_url(r["thumbnail"]),
                              "looks_like": looks.get(r["id"])} for r in records]}

    def _suspects(self, name: str, stored: list) -> dict[int, dict]:
        """{example id: {"class", "probability"}} for the examples of ``name`` that look taught to
        the wrong class (``imprinting.suspects``: scored with their class recomputed without them,
        at the model's scale or head temperature); empty when the class changed meanwhile."""
        if len(stored) < 2:
            return {}
        e = np.stack([x.embedding for x in stored])
        with self.lock:  # a copy: the leave-one-out runs without holding predictions up
            table = self.model.classes.copy()
        if name not in table or table.count(name) != len(stored):
            return {}  # changed between the two reads: no marks this time
        scale = table.head.temperature if table.head is not None else float(table.scale.mean())
        try:
            probabilities, scored = leave_one_out_probabilities(table, e, [name] * len(stored), scale)
        except CalibrationError:
            return {}
        found = find_suspects(probabilities, np.full(len(stored), table.index_of(name)), scored)
        return {stored[s.index].id: {"class": table.name_at(s.looks_like), "probability": round(s.probability, 4)}
                for s in found}

    def remove_example(self, name: str, example_id: int) -> dict:
        """Remove one example of a class taught here: the store deletes it and recomputes the
        class's sum and count from the remaining examples in one transaction, then the class
        in memory takes that state, at its place (the same weights as a batch imprint of the
        remaining examples). The last example takes the class with it."""
        check_class_name(name)
        check_example_id(example_id)
        with self._writing():
            self._require_taught_here(name)
            try:
                state = self.store.remove_example(name, example_id)
            except KeyError:
                self._sync(name)  # memory may be behind the store (another replica): reload the class
                raise ApiError(404, "unknown_example", f"class {name!r} has no example {example_id}") from None
            except StoreError as exc:
                raise store_error("the example was not removed, nothing changed", exc,
                                  check="GET /classes/{name}/examples lists the examples left") from None
            self._sync(name, None if state is None else StoredClass(name, *state))
            self.follow_calibration()
        if state is None:
            return {"removed": example_id, "name": name, "examples": 0, "class_deleted": True}
        return {"removed": example_id, **self._describe(name, state[1]), "class_deleted": False}

    def rename(self, name: str, new_name: str) -> dict:
        """Rename a class taught here, in the store, then in memory (examples kept; in its
        place on this replica). Renaming a class to its own name changes nothing."""
        check_class_name(name)
        check_class_name(new_name)
        with self._writing():
            self._require_taught_here(name)
            if new_name == name:
                return {"renamed": name, **self._describe(name, self._count(name))}
            with self.lock:
                if self.model.has_class(new_name):
                    raise ApiError(409, "class_exists", f"there is already a class named {new_name!r}")
            self._check_not_confusable(new_name, renaming=name)
            try:
                renamed = self.store.rename_class(name, new_name)
            except ClassTaken:
                self._sync(new_name)  # another replica has it: memory learns of it now
                raise ApiError(409, "class_exists", f"there is already a class named {new_name!r}") from None
            except StoreError as exc:
                raise store_error("the class was not renamed, nothing changed", exc) from None
            if not renamed:
                self._sync(name)
                raise ApiError(404, "unknown_class", f"no class named {name!r} (another replica deleted or renamed it)")
            if self.follower is None:
                with self.lock:  # the same state and place, a new name
                    snap = self.model.snapshot_class(name)
                    self.model.remove_class(name)
                    self.model.restore_class(ClassSnapshot(new_name, snap.index, snap.fields, snap.kept))
            else:
                self._sync_many([name, new_name])
            self.calibration_after(lambda kept: kept.renamed(name, new_name))
            return {"renamed": name, **self._describe(new_name, self._count(new_name))}

    def _require_taught_here(self, name: str) -> None:
        with self.lock:
            self._require(name)
        if name in self.model_classes:
            raise ApiError(409, "read_only_class", f"class {name!r} comes from the model file; "
                                                   "only classes taught through the service can be edited")

    # -- thumbnails -------------------------------------------------------------------
    def save_thumbnails(self, ids: list[int], images: list) -> None:
        """Keep a small JPEG of each uploaded image with its example (for the page), made and
        written by a background thread so that the upload's answer does not wait for it
        (``examples`` waits for the pending ones). Best effort: a failure leaves them NULL."""
        with self._thumbnail_lock:
            self._thumbnail_jobs = [j for j in self._thumbnail_jobs if not j.done()]
            self._thumbnail_jobs.append(self._thumbnails.submit(self._write_thumbnails, ids, images))

    def _write_thumbnails(self, ids: list[int], images: list) -> None:
        try:
            self.store.add_thumbnails(ids, [jpeg_thumbnail(img, THUMBNAIL_PIXELS) for img in images])
        except Exception:  # noqa: BLE001  the class deleted meanwhile, the store closed or away: no thumbnail
            pass

    def wait_for_thumbnails(self) -> None:
        with self._thumbnail_lock:
            jobs = list(self._thumbnail_jobs)
        for job in jobs:
            job.result()

    def _sync_many(self, names: list[str]) -> None:
        """``_sync`` of several classes of a shared store, applied in one step."""
        try:
            read = [(n, *self.store.class_as_of(n)) for n in names]
        except StoreError:
            return  # the follower applies every committed change
        self.apply_committed([(n, c, c.version if c is not None else seq) for n, c, seq in read])
