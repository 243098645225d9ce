"""Example-level edits and calibration of a ``Service`` (issue 15): list a class's examples with
thumbnails, remove one, rename a class, fit the scale and unknown threshold from the examples
taught here. The ``Service`` methods of the same names call these functions, under its lock
as every other change; the store's side is in ``serve.store``, the maths in ``imprinting.calibration``.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from imprinting.classes import ClassSnapshot
from imprinting.serve.store import StoreError
from imprinting.serve.validation import ApiError, check_class_name


def examples(service, name: str) -> dict:
    """Class ``name``'s stored examples, oldest first: id, added (UTC, ISO 8601), SHA-256 of
    the image bytes, upload name and a JPEG thumbnail as a data URL (None for examples
    stored before thumbnails were kept). A model file's class has none here."""
    from imprinting.serve.thumbnails import data_url, iso_time

    check_class_name(name)
    wait_for_thumbnails(service)
    with service.lock:
        service._require(name)
        records = [] if name in service.model_classes else service.store.example_records(name)
    return {"name": name, "source": "model" if name in service.model_classes else "store",
            "examples": [{"id": r["id"], "added": iso_time(r["added"]), "sha256": r["sha256"], "filename": r["filename"],
                          "thumbnail": data_url(r["thumbnail"])} for r in records]}


def remove_example(service, name: str, example_id: int) -> dict:
    """Remove one example of a class taught here: the store deletes it and recomputes the
    class's sum and count from the remaining examples in one transaction, then the class
    in memory takes that state, at its place (the same weights as a batch imprint of the
    remaining examples). The last example takes the class with it."""
    check_class_name(name)
    with service.lock:
        service._require(name)
        require_taught_here(service, name)
        try:
            state = service.store.remove_example(name, example_id)
        except KeyError:
            raise ApiError(404, "unknown_example", f"class {name!r} has no example {example_id}") from None
        except (sqlite3.Error, StoreError) as exc:
            raise ApiError(503, "store_error", f"the example was not removed, nothing changed ({exc})") from exc
        if state is None:
            service.model.remove_class(name)
            return {"removed": example_id, "name": name, "examples": 0, "class_deleted": True}
        set_state(service, name, *state)
        return {"removed": example_id, **service._describe(name, state[1]), "class_deleted": False}


def rename(service, name: str, new_name: str) -> dict:
    """Rename a class taught here, in the store and in memory (examples and place kept)."""
    check_class_name(name)
    check_class_name(new_name)
    with service.lock:
        service._require(name)
        require_taught_here(service, name)
        if service.model.has_class(new_name):
            raise ApiError(409, "class_exists", f"there is already a class named {new_name!r}")
        try:
            service.store.rename_class(name, new_name)
        except (sqlite3.Error, StoreError) as exc:
            raise ApiError(503, "store_error", f"the class was not renamed, nothing changed ({exc})") from exc
        rename_in_memory(service, name, new_name)
        return {"renamed": name, **service._describe(new_name, service._count(new_name))}


def calibrate(service, target_false_accept: float = 0.05) -> dict:
    """Fit the scale and the unknown threshold by leave-one-out over the examples taught
    here (the model file's classes compete; ``imprinting.calibration``), apply them and
    keep them in the store, so a restart applies them again."""
    import json

    from imprinting.calibration import CalibrationError, calibrate

    with service.lock:
        names, embeddings = service.store.labelled_embeddings()
        if not names:
            raise ApiError(409, "no_examples", "no class has been taught here yet: nothing to calibrate from")
        try:
            result = calibrate(service.model, embeddings, names, "leave-one-out", target_false_accept)
        except CalibrationError as exc:
            raise ApiError(409, "cannot_calibrate", str(exc)) from None
        saved = {"scale": result.scale, "unknown_threshold": result.unknown_threshold}
        try:
            service.store.set_setting("calibration", json.dumps(saved))
        except (sqlite3.Error, StoreError) as exc:
            raise ApiError(503, "store_error", f"calibrated in memory but not saved ({exc})") from exc
    return result.to_dict()


def apply_saved_calibration(service, keep_threshold: bool) -> None:
    """The calibration ``calibrate`` kept in the store, if any (``keep_threshold``: the
    caller chose the threshold)."""
    import json

    from imprinting.calibration import Calibration, apply

    if (saved := service.store.setting("calibration")) is not None:
        v = json.loads(saved)
        before = float(service.model.classes.scale.mean())
        saved_calibration = Calibration("saved", before, float(v["scale"]), None, None, 0, v["unknown_threshold"], 0.0, None)
        apply(service.model, saved_calibration, set_threshold=not keep_threshold)


def require_taught_here(service, name: str) -> None:
    if name in service.model_classes:
        raise ApiError(409, "read_only_class", f"class {name!r} comes from the model file; "
                                              "only classes taught through the service can be edited")


def save_thumbnails(service, ids: list[int], images: list) -> None:
    """Keep a small JPEG of each uploaded image with its example (for the page), made and
    written by a background thread so that the upload's answer does not wait for it
    (``examples`` waits for the pending ones). Best effort: a failure leaves them NULL."""
    from concurrent.futures import ThreadPoolExecutor

    if getattr(service, "_thumbnailer", None) is None:
        service._thumbnailer, service._thumbnail_jobs = ThreadPoolExecutor(1, thread_name_prefix="thumbnails"), []
    service._thumbnail_jobs = [j for j in service._thumbnail_jobs if not j.done()]
    service._thumbnail_jobs.append(service._thumbnailer.submit(_write_thumbnails, service, ids, images))


def _write_thumbnails(service, ids: list[int], images: list) -> None:
    from imprinting.serve.thumbnails import jpeg_thumbnail

    try:
        blobs = [jpeg_thumbnail(img, service.THUMBNAIL_PIXELS) for img in images]
        with service.lock:
            service.store.add_thumbnails(ids, blobs)
    except Exception:  # noqa: BLE001  the class deleted meanwhile, the store closed: no thumbnail
        pass


def wait_for_thumbnails(service) -> None:
    for job in list(getattr(service, "_thumbnail_jobs", [])):
        job.result()


def set_state(service, name: str, total: np.ndarray, count: int) -> None:
    """Class ``name`` becomes the class of this float64 sum and count, at its place."""
    index = service.model.index_of(name)
    service.model.remove_class(name)
    service.model.add_class_from_sum(name, total, count)
    snap = service.model.snapshot_class(name)
    service.model.remove_class(name)
    service.model.restore_class(ClassSnapshot(name, index, snap.fields))


def rename_in_memory(service, name: str, new_name: str) -> None:  # the same state and place, a new name
    snap = service.model.snapshot_class(name)
    service.model.remove_class(name)
    service.model.restore_class(ClassSnapshot(new_name, snap.index, snap.fields))

