"""The service without HTTP: an ``ImprintModel``, its durable ``Store``, the limits, and the
lock that keeps them in step. The FastAPI app (``serve.app``) is a thin layer of routes over
this class; tests and scripts can drive it directly.

Every public method returns the JSON-able dict its route answers and raises ``ApiError`` for
a client error. Images are embedded with ``model.embed_images``, classes are taught with
``model.add_class`` / ``model.add_examples``, answers come from ``model.predict_embeddings``.

Concurrency: methods may be called from many threads at once (FastAPI's thread pool).
Decoding and embedding run in one worker for all requests, outside any lock (``serve.batcher``). Two locks:

* ``lock`` covers the classes in memory only, and is held for microseconds: no store call
  ever happens under it, so a slow, hung or lost database never delays a prediction;
* ``_writes`` puts this process's writes in one line: each one commits to the store first,
  then memory takes what the store committed (``apply_committed``), so a prediction never sees a
  half-added class or an upload whose transaction has not committed, and a write the store
  refused changes nothing. A write waits for it at most ``WRITE_WAIT_SECONDS`` (503 after).

Over a shared store (PostgreSQL replicas), memory takes each class as the database holds it,
with the change number of that state; it only ever moves forward (``_versions``), whether the
change comes from this replica's own write or from the follower (``serve.follow``).

The model's per-class state (sums and counts) is read and written only by the small private
methods at the end of the class (``_state``, ``_count``, ``_counts``, ``_undo``, ``_restore``,
``_fingerprint``), so that a change in how the model keeps that state touches only them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch
from PIL import Image

from imprinting import checkpoint
from imprinting.classes import ClassSnapshot, ClassTable
from imprinting.data.images import MAX_PIXELS
from imprinting.data.transforms import eval_crop, image_mode
from imprinting.errors import UserError
from imprinting.serve.admission import Admission
from imprinting.serve.batcher import Batcher
from imprinting.serve.contract import ClassStore, StoredClass, StoreError
from imprinting.serve.edits import ServiceEdits, store_error
from imprinting.serve.follow import Follower
from imprinting.serve.predictions import ServicePredictions
from imprinting.serve.stores import open_store
from imprinting.serve.validation import (
    ApiError,
    Upload,
    check_class_name,
    read_image,
)


class Service(ServiceEdits, ServicePredictions):
    """The classes of one model, taught through the service and kept in one store. The
    predictions are in ``serve.predictions``, the example-level edits and calibration in
    ``serve.edits`` (parts of this class)."""

    def __init__(self, model, store: ClassStore, *, max_images: int = 16, max_pixels: int = MAX_PIXELS,
                 admission: Admission | None = None, threshold_pinned: bool = False, **batching):
        """Take ``model`` (a cosine ``ImprintModel``) and ``store`` (opened for this model) and
        restore the store's classes into the model. The service owns the store from here:
        it is closed if restoring fails, and by ``close``. The classes the model has now are
        the model file's: read-only here. ``admission``: the bounds across all requests
        (``serve.admission``; default: a 30 s queue, no ceiling on the process).
        ``threshold_pinned``: the unknown threshold was chosen at start (``--unknown-threshold``)
        and calibration leaves it as it is. ``batching``: the inference worker's (``Batcher.for_model``)."""
        self.model = model
        self.store = store
        self.model_classes = frozenset(model.class_names)
        self.max_images = max_images
        self.max_pixels = max_pixels
        self.admission = admission or Admission(memory_limit_mb=None)
        pre = model.preprocess
        # decode straight to what the model's resize makes of an image when that is smaller (a
        # no-op for it after); a smaller image is kept, and only its crop resized later
        self._decoding = {"mode": image_mode(pre), "reduce_to": pre.resize_size, "shrink": eval_crop(pre).shrink}
        self.threshold_pinned = threshold_pinned
        self.lock = threading.Lock()  # the classes in memory (never held across a store call)
        self._writes = threading.Lock()  # this process's writes, one at a time
        self._versions: dict[str, int] = {}  # shared store: class -> change number of its state in memory
        self._thumbnails = ThreadPoolExecutor(1, thread_name_prefix="thumbnails")  # serve.edits
        self._thumbnail_jobs: list = []
        self._thumbnail_lock = threading.Lock()
        self.follower = None  # replicas over a shared store: serve.follow
        try:
            stored = store.classes()
            for c in stored:
                if model.has_class(c.name):
                    raise StoreError(f"{store.path}: class {c.name!r} is in both the store and the model file")
            self._restore(stored)
            read = partial(read_image, max_pixels=max_pixels, admission=self.admission, **self._decoding)
            self.batcher = Batcher.for_model(model, read, throughput=self.admission.throughput, **batching)
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
        **batching,
    ) -> Service:
        """Load the model file, open (or create) its store, restore the stored classes, and
        warm the inference worker up (its engine, a first measure of its rate) for the first request.

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
        service = cls(model, store, max_images=max_images, max_pixels=max_pixels, admission=admission,
                      threshold_pinned=unknown_threshold is not None, **batching)
        try:
            if store.shared:  # replicas: follow the others' writes (serve.follow)
                service.follower = Follower(service, store, store.snapshot_seq).start()
            size = model.preprocess.image_size
            service.batcher.warm_up(Image.new("RGB", (size, size)))
            service.apply_saved_calibration()  # POST /calibrate's
        except BaseException:
            service.close()
            raise
        return service

    def close(self) -> None:
        """Stop the inference worker (what is queued gets 503), close the store (once no write is in progress)."""
        if self.follower is not None:
            self.follower.stop()
        self.batcher.close()
        self.wait_for_thumbnails()
        self._thumbnails.shutdown(wait=True)
        with self._writes:
            self.store.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------
    def health(self) -> dict:
        """Liveness (always ``"status": "ok"`` while the process answers), readiness (whether
        writes can be taken now: the store's state), and the model's summary. The app adds
        what only HTTP knows (whether writes need a token, the request size limit)."""
        n = self.model.num_classes  # one read, without the lock: health never waits for a request
        store = self.store_state()
        return {
            "status": "ok",
            "ready": store["state"] == "ok",
            "store": store,
            "calibration": self.calibration_state(),  # reads without the lock: health never waits
            "classes": n,
            "backbone": self.model.spec.backbone,
            "embedding_dim": self.model.embedder.dim,
            "image_size": self.model.preprocess.image_size,
            "unknown_threshold": self.threshold_now(),  # read, never computed: health does not wait
            "limits": {"max_images": self.max_images, "max_pixels": self.max_pixels, **self.admission.limits(),
                       **self.batcher.limits()},
            "load": self.admission.state(),
            "queue": {**self.admission.queue(), **self.batcher.stats()},
        }

    def store_state(self) -> dict:
        """``{"state": "ok" | "degraded" | "closed", "detail": ...}``, read without waiting:
        degraded while the store cannot be reached, a call to it is past its deadline, or (a
        replica) the follower has lost the other replicas' changes and is reconnecting.
        Predictions go on meanwhile; writes are answered 503."""
        state = dict(self.store.state())
        follower = self.follower
        if state["state"] == "ok" and follower is not None:
            if not follower.connected.is_set():
                state = {"state": "degraded", "detail": "not following the other replicas' changes (reconnecting)"}
            elif follower.silent_for() > 2 * follower.poll_seconds + 1:
                state = {"state": "degraded", "detail": f"the database has not answered for {follower.silent_for():.0f} s"}
        return state

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
        except StoreError as exc:
            raise store_error("the store could not be read", exc, write=False) from None
        out["stored_examples"] = [{"id": e.id, "sha256": e.sha256, "filename": e.filename} for e in examples]
        return out

    def calibration_state(self) -> dict:
        """What the unknown flag and the prediction sets rest on (read without waiting: one
        read of the model's scores and names):
        ``calibrated``, the examples scored, ``follows`` when the scores are recomputed from the
        store's examples after every change of the classes (``imprinting.calibration_set``) and
        ``stale`` when they are not for the classes of now: a calibration from before the
        examples were kept, after classes were added or removed (POST /calibrate again), or a
        store read after a change that failed (``serve.edits.follow_calibration``)."""
        table = self.model.classes
        kept = table.calibration
        if kept is not None:  # the last scores computed (at start, then at each change): health never waits
            result = kept.peek()
            if result is None or result.conformal is None:
                return {"calibrated": False}
            return {"calibrated": True, "follows": True, "examples": result.conformal.n,
                    "stale": self.calibration_behind}
        c = self.model.conformal
        if c is None:
            return {"calibrated": False}
        return {"calibrated": True, "follows": False, "examples": c.n, "stale": c.stale_for(table.names)}

    # -- helpers ---------------------------------------------------------------
    def _read_and_embed(self, uploads: Sequence[Upload]) -> tuple[torch.Tensor, list[str], list[str], list]:
        """The uploads decoded and embedded by the inference worker (``serve.batcher``): (embeddings,
        SHA-256 of each file, display names, the decoded images: thumbnails). The caller holds the admission."""
        embeddings, images, shas, names = self.batcher.run(uploads)  # checked: no NaN or infinite row
        return embeddings, shas, names, images

    def apply_committed(self, changes: list[tuple[str, StoredClass | None, int | None]]) -> None:
        """Memory takes classes as the store committed them, under the lock, in one step:
        (name, the stored class or None for gone, its change number over a shared store or
        None). A state older than the one in memory is skipped: memory only moves forward."""
        with self.lock:
            for name, stored, version in changes:
                if version is not None:
                    if self._versions.get(name, -1) >= version:
                        continue
                    self._versions[name] = version
                self.apply_stored_class(name, stored)

    def _sync(self, name: str, stored=...) -> None:
        """After a write (or on finding memory behind): class ``name`` in memory becomes what
        the store holds now. One process: ``stored`` is what it wrote (``...``: read it).
        A shared store: read with the change number it is as of; a read that fails is left to
        the follower, which applies every committed change."""
        try:
            if self.follower is not None:
                current, seq = self.store.class_as_of(name)
                self.apply_committed([(name, current, current.version if current is not None else seq)])
            else:
                self.apply_committed([(name, self.store.get_class(name) if stored is ... else stored, None)])
        except StoreError:
            if self.follower is None:
                raise

    def version_of(self, name: str) -> int:
        """The change number of class ``name``'s state in memory (shared store; -1: none known)."""
        return self._versions.get(name, -1)

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

    def _restore(self, stored: list[StoredClass]) -> None:
        """Add the store's classes to the model, in the store's order, from their sums and
        counts: the same weights, bit for bit, as when they were taught (over a shared store,
        with the change number each is as of)."""
        for c in stored:
            self.model.add_class_from_sum(c.name, c.sum, c.count)
            if getattr(c, "version", None) is not None:
                self._versions[c.name] = c.version

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
        """Make class ``name`` in memory what the store holds (``None``: no such class), e.g.
        after another replica changed it. The caller holds ``self.lock`` (``apply_committed`` does).
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

    def stored_names(self) -> list[str]:
        """The classes in memory that came from the store (not the model file's)."""
        with self.lock:
            return [n for n in self.model.class_names if n not in self.model_classes]

    def replace_stored(self, stored: list[StoredClass], versions: dict[str, int]) -> None:
        """Memory's store classes become exactly ``stored`` (a shared store reloaded after it
        went back in time), with these change numbers, in one step under the lock."""
        with self.lock:
            keep = {c.name for c in stored}
            for name in [n for n in self.model.class_names if n not in self.model_classes and n not in keep]:
                self.apply_stored_class(name, None)
            for c in stored:
                self.apply_stored_class(c.name, c)
            self._versions = dict(versions)

    @staticmethod
    def _fingerprint(model) -> str:
        """The store's key for ``model``: a store opens only for the model it was made with."""
        return model.store_fingerprint()
