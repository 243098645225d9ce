"""The service without HTTP: an ``ImprintModel``, its durable ``Store``, the limits, and the
lock that keeps them in step. The FastAPI app (``serve.app``) is a thin layer of routes over
this class; tests and scripts can drive it directly.

Every public method returns the JSON-able dict its route answers and raises ``ApiError`` for
a client error. Images are embedded with ``model.embed_images``, classes are taught with
``model.add_class`` / ``model.add_examples``, answers come from ``model.predict_embeddings``.

Concurrency: methods may be called from many threads at once (FastAPI's thread pool).
Decoding and embedding (the slow part) run outside the lock, in parallel; one lock covers
the in-memory classes and the store, so the classes change in commit order and a prediction
never sees a half-added class or an upload whose transaction has not committed.

The model's per-class state (sums and counts) is read and written only by the small private
methods at the end of the class (``_state``, ``_count``, ``_counts``, ``_undo``, ``_restore``,
``_fingerprint``), so that a change in how the model keeps that state touches only them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from imprinting import checkpoint
from imprinting.data.images import MAX_PIXELS
from imprinting.classes import ClassSnapshot, ClassTable
from imprinting.errors import UserError
from imprinting.serve.integrity import MAX_COUNT
from imprinting.serve.store import Store, StoredClass, StoreError
from imprinting.serve.admission import Admission
from imprinting.serve.stores import open_store
from imprinting.serve.validation import ApiError, Upload, check_class_name, check_uploads, read_images


def _store_error(detail: str) -> ApiError:
    """503 for a write the disk refused (full, read-only, I/O error): nothing was changed."""
    return ApiError(503, "store_error", detail, headers={"Retry-After": "10"})


class Service:
    """The classes of one model, taught through the service and kept in one store."""

    def __init__(self, model, store: Store, *, max_images: int = 16, max_pixels: int = MAX_PIXELS,
                 admission: Admission | None = None):
        """Take ``model`` (a cosine ``ImprintModel``) and ``store`` (opened for this model) and
        restore the store's classes into the model. The service owns the store from here:
        it is closed if restoring fails, and by ``close``. The classes the model has now are
        the model file's: read-only here. ``admission``: the bounds across all requests
        (``serve.admission``; default: two full requests in flight, no ceiling on the process)."""
        from imprinting.data.transforms import eval_crop, image_mode

        self.model = model
        self.store = store
        self.model_classes = frozenset(model.class_names)
        self.max_images = max_images
        self.max_pixels = max_pixels
        self.admission = admission or Admission(max_images_in_flight=2 * max_images, memory_limit_mb=None)
        pre = model.preprocess
        # decode straight to what the model's resize makes of an image (a no-op for it after)
        self._decoding = {"mode": image_mode(pre), "reduce_to": pre.resize_size, "shrink": eval_crop(pre).resize}
        self.lock = threading.Lock()
        # one forward pass at a time: it already uses every core, and more at once only add
        # runnable threads (the event loop, /health, would wait for the CPU behind them)
        self._forward = threading.Lock()
        self.follower = None  # replicas over a shared store: serve.follow
        try:
            stored = store.classes()
            for c in stored:
                if model.has_class(c.name):
                    raise StoreError(f"{store.path}: class {c.name!r} is in both the store and the model file")
            self._restore(stored)
        except BaseException:
            store.close()
            raise

    @classmethod
    def open(
        cls,
        model_path,
        store_path,
        *,
        unknown_threshold: float | None = None,
        max_images: int = 16,
        max_pixels: int = MAX_PIXELS,
        admission: Admission | None = None,
    ) -> Service:
        """Load the model file, open (or create) its store, restore the stored classes, and
        run one forward so that the first request is not slow.

        ``unknown_threshold`` overrides the model's. Raises ``CheckpointError`` for a bad
        model file, ``ValueError`` for a model without a cosine classifier, and
        ``StoreError`` for a store that belongs to another model, is damaged, or is in use
        by another process.
        """
        model = checkpoint.load(model_path)
        if model.spec.classifier != "cosine":
            raise UserError(f"{model_path}: the service needs a cosine classifier, not {model.spec.classifier!r}")
        if unknown_threshold is not None:
            model.unknown_threshold = unknown_threshold
        description = f"{model.spec.backbone}, image size {model.preprocess.image_size}"
        store = open_store(store_path, model.embedder.dim, cls._fingerprint(model), description)
        service = cls(model, store, max_images=max_images, max_pixels=max_pixels, admission=admission)
        try:
            if getattr(store, "shared", False):  # replicas: follow the others' writes (serve.follow)
                from imprinting.serve.follow import Follower

                service.follower = Follower(service, store, store.snapshot_seq).start()
            size = model.preprocess.image_size
            model.embed_images([Image.new("RGB", (size, size))])  # warm up
        except BaseException:
            service.close()
            raise
        service._apply_saved_calibration(keep_threshold=unknown_threshold is not None)  # POST /calibrate's
        return service

    def close(self) -> None:
        """Close the store (once no request holds the lock)."""
        if self.follower is not None:
            self.follower.stop()
        with self.lock:
            self.store.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------
    def health(self) -> dict:
        """Liveness and the model's summary. The app adds what only HTTP knows (whether
        writes need a token, the request size limit)."""
        n = self.model.num_classes  # one read, without the lock: health never waits for a request
        return {
            "status": "ok",
            "classes": n,
            "backbone": self.model.spec.backbone,
            "embedding_dim": self.model.embedder.dim,
            "image_size": self.model.preprocess.image_size,
            "unknown_threshold": self.model.unknown_threshold,
            "limits": {"max_images": self.max_images, "max_pixels": self.max_pixels, **self.admission.limits()},
            "load": self.admission.state(),
        }

    def classes(self) -> dict:
        """Every class, in the model's order: name, kind, example count, source."""
        with self.lock:
            return {"classes": [self._describe(n, c) for n, c in self._counts()]}

    def get_class(self, name: str) -> dict:
        """One class, with its stored examples (id, SHA-256 of the image bytes, upload name)."""
        check_class_name(name)
        with self.lock:
            self._require(name)
            out = self._describe(name, self._count(name))
            try:
                examples = self.store.examples(name) if out["source"] == "store" else []
            except (sqlite3.Error, StoreError) as exc:
                raise _store_error(f"the store could not be read ({exc})") from exc
        out["stored_examples"] = [{"id": e.id, "sha256": e.sha256, "filename": e.filename} for e in examples]
        return out

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
        check_uploads(uploads, self.max_images)
        with self.admission.admit(len(uploads)):
            embeddings, shas, names, images = self._read_and_embed(uploads)
        embedded = time.perf_counter()
        body = self._commit(name, embeddings, shas, names)
        self._save_thumbnails(body["example_ids"], images)
        body["seconds"] = round(time.perf_counter() - start, 4)
        body["embed_seconds"] = round(embedded - start, 4)
        return body

    def predict(self, uploads: Sequence[Upload], k: int = 5, unknown_threshold: float | None = None) -> dict:
        """The top-k classes of each upload with probabilities and cosines, and whether its
        best cosine is below the threshold (this call's, or the model's)."""
        start = time.perf_counter()
        check_uploads(uploads, self.max_images)
        with self.admission.admit(len(uploads)):
            embeddings, _, names, _ = self._read_and_embed(uploads)
        with self.lock:
            if self.model.num_classes == 0:
                raise ApiError(409, "no_classes", "the model has no classes yet: teach one first")
            predictions = self.model.predict_embeddings(embeddings, k, unknown_threshold)
            threshold = self.model.unknown_threshold if unknown_threshold is None else unknown_threshold
        results = [
            {
                "file": fname,
                "unknown": p.unknown,
                "top": [{"class": c, "probability": pr, "cosine": cos}
                        for c, pr, cos in zip(p.classes, p.probabilities, p.cosines)],
            }
            for fname, p in zip(names, predictions)
        ]
        return {"predictions": results, "unknown_threshold": threshold, "seconds": round(time.perf_counter() - start, 4)}

    def delete(self, name: str) -> dict:
        """Delete a class taught through the service, with its examples: from the store
        first (durable), then from memory. The model file's classes are protected."""
        check_class_name(name)
        with self.lock:
            self._require(name)
            if name in self.model_classes:
                kind = "an imprinted class of the model file" if self.model.is_imprinted(name) else "a base class"
                raise ApiError(409, "protected_class", f"class {name!r} is {kind} and cannot be deleted here")
            try:
                self.store.remove_class(name)
            except (sqlite3.Error, StoreError) as exc:
                raise _store_error(f"class {name!r} was not deleted, nothing changed ({exc})") from exc
            self.model.remove_class(name)
            left = self.model.num_classes
        return {"deleted": name, "classes": left}

    # -- helpers ---------------------------------------------------------------
    def _read_and_embed(self, uploads: Sequence[Upload]) -> tuple[torch.Tensor, list[str], list[str], list]:
        """Decode the uploads (shrunk at once, within the decoding bound) and embed them:
        (embeddings, SHA-256 of each file, display names, the decoded images, e.g. for
        thumbnails). The caller holds the admission."""
        images, shas, names = read_images(uploads, self.max_images, self.max_pixels, admission=self.admission,
                                          **self._decoding)
        return self._embed(images, names), shas, names, images

    def _embed(self, images: list, names: list[str]) -> torch.Tensor:
        """The images' embeddings; one that is NaN or infinite (a damaged model, or an image
        the model cannot embed) refuses the request before anything is taught or answered."""
        with self._forward:
            embeddings = self.model.embed_images(images)
        bad = ~torch.isfinite(embeddings).all(dim=1)
        if bad.any():
            raise ApiError(422, "unembeddable_image",
                           f"{names[int(bad.nonzero()[0])]}: the model gives it a NaN or infinite embedding")
        return embeddings

    def _commit(self, name: str, embeddings: torch.Tensor, shas: list[str], names: list[str]) -> dict:
        """Teach ``name`` in memory and commit the upload, undoing the memory on any store
        error. Returns the class as it is after this upload, with ``created`` and ``example_ids``."""
        model = self.model
        with self.lock:
            created = not model.has_class(name)
            count = 0 if created else self._count(name)
            if count + len(embeddings) > MAX_COUNT:
                raise ApiError(409, "class_full", f"class {name!r} has {count} examples; the limit is {MAX_COUNT}")
            before = None if created else self.model.snapshot_class(name)
            if created:
                model.add_class(name, embeddings)
            else:
                model.add_examples(name, embeddings)
            new_sum, new_count = self._state(name)
            try:
                if self.follower is None:
                    ids = self.store.add_examples(name, embeddings.numpy(), new_sum, new_count, shas, names)
                else:  # replicas: the database adds the upload to what it holds; memory takes that
                    ids, created, new_count = self.follower.add_examples(name, embeddings.numpy(), shas, names)
            except BaseException as exc:
                self._undo(name, before)
                if isinstance(exc, (sqlite3.Error, StoreError)):
                    raise _store_error(f"the upload was not saved, nothing changed ({exc})") from exc
                raise
            return {**self._describe(name, new_count), "created": created, "added": len(ids), "example_ids": ids}

    def _describe(self, name: str, count: int) -> dict:
        """One class as the API shows it, given its example count."""
        return {
            "name": name,
            "kind": "imprinted" if count else "base",
            "examples": count,
            "source": "model" if name in self.model_classes else "store",
        }

    def _require(self, name: str) -> None:
        """404 for a class the model does not have (the caller holds the lock)."""
        if not self.model.has_class(name):
            raise ApiError(404, "unknown_class", f"no class named {name!r}")

    # -- the model's class state: read through its class table ----------------------
    def _state(self, name: str) -> tuple[np.ndarray, int]:
        """Class ``name``'s float64 sum of L2-normalized embeddings (a copy) and its example
        count: what the store records."""
        table = self.model.classes
        index = table.index_of(name)
        return table.sums[index].copy(), int(table.counts[index])

    def _count(self, name: str) -> int:
        """Class ``name``'s example count (0 for a trained base class)."""
        return self.model.classes.count(name)

    def _counts(self) -> list[tuple[str, int]]:
        """Every class's (name, example count), in the model's order, in one read."""
        table = self.model.classes
        return list(zip(table.names, table.counts.tolist()))

    def _undo(self, name: str, before: ClassSnapshot | None) -> None:
        """Put class ``name`` back as it was before a failed upload: gone if the upload
        created it (``before`` is None), else exactly as ``before`` saw it, in its place."""
        if before is None:
            self.model.remove_class(name)
        else:
            self.model.restore_class(before)

    def _restore(self, stored: list[StoredClass]) -> None:
        """Add the store's classes to the model, in the store's order, from their sums and
        counts: the same weights, bit for bit, as when they were taught."""
        for c in stored:
            self.model.add_class_from_sum(c.name, c.sum, c.count)

    def _set_state(self, name: str, total: np.ndarray, count: int) -> None:
        """Give the existing class ``name`` this sum and count, in its place: the row the
        class table computes for them (``add_from_sum``), the class's other fields unchanged."""
        current = self.model.snapshot_class(name)
        scratch = ClassTable(self.model.classes.dim)
        scratch.add_from_sum(name, total, count)
        fields = {**current.fields, **scratch.snapshot(name).fields}
        self.model.restore_class(ClassSnapshot(name, current.index, fields))

    # -- replicas over a shared store (serve.follow) ---------------------------------
    def apply_stored_class(self, name: str, stored: StoredClass | None) -> None:
        """Make class ``name`` in memory what the shared store holds (``None``: no such
        class), e.g. after another replica changed it. The caller holds ``self.lock``.
        The model file's classes are never touched."""
        if name in self.model_classes:
            return
        if stored is None:
            if self.model.has_class(name):
                self.model.remove_class(name)
        elif not self.model.has_class(name):
            self.model.add_class_from_sum(name, stored.sum, stored.count)
        else:
            total, count = self._state(name)
            if count != stored.count or not np.array_equal(total, stored.sum):
                self._set_state(name, stored.sum, stored.count)

    @staticmethod
    def _fingerprint(model) -> str:
        """The store's key for ``model``: a store opens only for the model it was made with."""
        return model.store_fingerprint()

    # -- example-level edits and calibration (issue 15; the work is in serve/edits.py) ----
    THUMBNAIL_PIXELS = 128  # the longer side of the JPEG kept per example for the page

    def examples(self, name: str) -> dict:
        """Class ``name``'s stored examples, oldest first, with thumbnails (``edits.examples``)."""
        from imprinting.serve import edits

        return edits.examples(self, name)

    def remove_example(self, name: str, example_id: int) -> dict:
        """Remove one example; the class becomes a batch imprint of the others (``edits.remove_example``)."""
        from imprinting.serve import edits

        return edits.remove_example(self, name, example_id)

    def rename(self, name: str, new_name: str) -> dict:
        """Rename a class taught here, in the store and in memory (``edits.rename``)."""
        from imprinting.serve import edits

        return edits.rename(self, name, new_name)

    def calibrate(self, target_false_accept: float = 0.05) -> dict:
        """Fit the scale and the unknown threshold from the examples taught here (``edits.calibrate``)."""
        from imprinting.serve import edits

        return edits.calibrate(self, target_false_accept)

    def _apply_saved_calibration(self, keep_threshold: bool) -> None:
        from imprinting.serve import edits

        edits.apply_saved_calibration(self, keep_threshold)

    def _save_thumbnails(self, ids: list[int], images: list) -> None:
        from imprinting.serve import edits

        edits.save_thumbnails(self, ids, images)
