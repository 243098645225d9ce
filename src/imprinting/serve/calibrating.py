"""The service's calibration: ``POST /calibrate``, the calibration kept in the store and applied
at start, and how it follows the classes afterwards. ``ServiceCalibration`` is a part of
``serve.service.Service`` (through ``serve.edits.ServiceEdits``); the maths is
``imprinting.calibration`` and ``imprinting.calibration_set``.

A calibration made here keeps its examples with the class table (at most
``calibration_set.MAX_ROWS``), so after every change of the classes the scores, the unknown
threshold and the prediction sets are those one calibration over the examples of now would give,
at the scale in force. This process's own changes update the kept examples from what it
committed (a teach adds its embeddings, a delete drops the class, a rename relabels it); a
removed example, and the changes a replica follows from others, are read from the store again
(every example's embedding, one query). The scores are computed on a copy of the classes, outside
the lock that predictions take, and installed only if the classes did not change meanwhile. One
update at a time (``_calibration_lock``), so an older read never replaces a newer one.
"""

from __future__ import annotations

import json
import threading

import numpy as np

from imprinting.calibration import Calibration, CalibrationError, apply, calibrate_table, kept_result
from imprinting.calibration_set import CalibrationSet
from imprinting.conformal import ConformalScores
from imprinting.serve.contract import StoreError
from imprinting.serve.store_answers import store_error
from imprinting.serve.validation import ApiError


class ServiceCalibration:
    """The calibration of ``Service`` (see the module): uses its model, store, locks and ``_writing``."""

    _calibration_targets: dict | None = None  # the rate asked for, once calibrated here since examples are kept
    calibration_behind = False  # a store read to follow a change failed: /health says stale

    def calibrate(self, target_false_accept: float | None = None, target_false_reject: float | None = None) -> dict:
        """Fit the scale, the unknown threshold (for a false-reject rate, 0.05 by default and
        guaranteed; or for a false-accept rate) and the prediction sets' scores by leave-one-out
        over the examples taught here (the model file's classes compete; ``imprinting.calibration``),
        keep them in the store (one transaction: a crash leaves the old calibration or the new
        one, never a mix), then apply them, so a restart applies them again. A threshold chosen at
        start (``--unknown-threshold``) stays in force: ``unknown_threshold_applied`` says which."""
        with self._writing():  # no upload of this process between the read and the fit
            try:
                names, embeddings = self.store.labelled_embeddings()
            except StoreError as exc:
                raise store_error("the store could not be read, nothing changed", exc, write=False) from None
            if not names:
                raise ApiError(409, "no_examples", "no class has been taught here yet: nothing to calibrate from")
            with self.lock:  # a copy of the classes: the fit (seconds at thousands of classes) runs unlocked
                table = self.model.classes.copy()
            try:
                result = calibrate_table(table, embeddings, list(names), "leave-one-out", target_false_accept,
                                         target_false_reject=target_false_reject)
            except (CalibrationError, KeyError) as exc:
                raise ApiError(409, "cannot_calibrate", str(exc)) from None
            saved = {"scale": result.scale, "unknown_threshold": result.unknown_threshold,
                     "target_false_reject": result.target_false_reject, "target_false_accept": result.target_false_accept,
                     "conformal": result.conformal.to_json() if result.conformal is not None else None,
                     "follows": True}  # the scores follow the classes: recomputed from the store's examples
            try:
                self.store.set_setting("calibration", json.dumps(saved))
            except StoreError as exc:
                raise store_error("the calibration was not saved, nothing changed", exc,
                                  check="POST /calibrate again once the store answers") from None
            with self._lock_calibration():
                with self.lock:
                    apply(self.model, result, set_threshold=not self.threshold_pinned)
                    in_force = self.model.unknown_threshold
                self._calibration_targets = _targets(result.target_false_reject, result.target_false_accept)
                self.calibration_behind = False
        return {**result.to_dict(), "unknown_threshold_applied": not self.threshold_pinned,
                "unknown_threshold_in_force": in_force}

    def apply_saved_calibration(self) -> None:
        """The calibration ``calibrate`` kept in the store, if any (a threshold chosen at start
        stays). The scores of the classes of now are computed here, once, before any request.
        A store calibrated before the examples were kept keeps its fixed scores (``stale`` once
        the classes change, until ``POST /calibrate``)."""
        with self.lock:
            self.model.conformal  # noqa: B018  (a model file's kept examples: scores for its classes and the store's)
        if (saved := self.store.setting("calibration")) is None:
            return
        try:
            v = json.loads(saved)
            before = float(self.model.classes.scale.mean())
            scores = ConformalScores.from_json(v["conformal"]) if v.get("conformal") is not None else None
            calibration = Calibration("saved", before, float(v["scale"]), None, None, 0, v["unknown_threshold"],
                                      v.get("target_false_accept", 0.0), None, v.get("target_false_reject"),
                                      conformal=scores)
            targets = _targets(v.get("target_false_reject"), v.get("target_false_accept")) if v.get("follows") else None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"the store's saved calibration is damaged ({exc}); POST /calibrate again, or "
                             "use a new store") from None
        with self.lock:
            apply(self.model, calibration, set_threshold=not self.threshold_pinned)
        if targets is not None:  # calibrated since the examples are kept: they are the store's
            self._calibration_targets = targets
            self.follow_calibration()

    def threshold_now(self) -> float | None:
        """The unknown threshold in force, as last computed (``/health`` reads it without the
        lock: it never computes)."""
        kept, model = self.model.classes.calibration, self.model
        if kept is not None and model.threshold_follows and (result := kept.peek()) is not None:
            return result.unknown_threshold
        return model.unknown_threshold

    # -- following the classes --------------------------------------------------------
    def calibration_after(self, change) -> None:
        """After this process changed the classes: ``change(kept) -> kept`` applied to the kept
        examples (no store read), when calibrated here."""
        with self._lock_calibration():
            if self._calibration_targets is None:
                return
            with self.lock:
                kept = self.model.classes.calibration
            if kept is not None:
                self._install(change(kept))

    def follow_calibration(self) -> None:
        """The kept examples become the store's examples of now (one read of every example's
        embedding): after a removed example, and after changes followed from other replicas.
        A read that fails leaves them as they were, and ``calibration_behind`` says so until the
        next read. Services not calibrated here since the examples are kept do nothing."""
        with self._lock_calibration():
            if self._calibration_targets is None:
                return
            try:
                names, embeddings = self.store.labelled_embeddings()
            except StoreError:
                self.calibration_behind = True
                return
            e = np.asarray(embeddings, np.float32).reshape(len(names), -1)
            self._install(CalibrationSet(e, names, **self._calibration_targets))
            self.calibration_behind = False

    def _install(self, kept: CalibrationSet) -> None:
        """Give the classes ``kept``, its scores computed on a copy outside the predictions'
        lock and handed over if the classes did not change meanwhile (else the next prediction
        computes them)."""
        with self.lock:
            table = self.model.classes
            version, copy = table.version, table.copy()
        result = kept_result(kept, copy)
        with self.lock:
            table = self.model.classes
            table.calibration = kept
            self.model.threshold_follows = not self.threshold_pinned
            if table.version == version:
                kept.seed(table, result)

    def _lock_calibration(self):
        lock = self.__dict__.get("_calibration_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_calibration_lock", threading.RLock())
        return lock


def _targets(reject, accept) -> dict:
    return {"target_false_reject": reject, "target_false_accept": accept}
