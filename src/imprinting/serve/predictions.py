"""The service's predictions: ``POST /predict``. ``ServicePredictions`` is a part of
``serve.service.Service`` (a base class), split off where answering a photo ends and keeping
the classes begins.

A prediction takes three steps: the checks and the admission (``serve.admission``); the photos'
embeddings, from the inference worker (``serve.batcher``), waited for without a thread on the
event loop (``predict_async``, the app's) or in the caller's thread (``predict``, for tests and
scripts); then the answer, computed from the classes in memory under their lock
(``model.predict_embeddings``: one matrix product, the top k, the unknown flag and the
prediction sets). On the event loop the answer is computed in place only when that is sure to
be quick: the lock is free, the product small (``QUICK_PRODUCT``), and the calibration's scores
already computed for the classes of now (after a change of the classes the first prediction
recomputes them, seconds with thousands of classes); else it is computed in a thread, so the
loop (``/health``, the other requests) never waits behind it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import torch

from imprinting.conformal import ConformalError
from imprinting.serve.validation import ApiError, Upload, check_uploads

QUICK_PRODUCT = 4_000_000  # photos x classes x embedding width answered on the event loop at most (~1 ms)


class ServicePredictions:
    """The predictions of ``Service`` (see the module): uses its model, lock, admission, batcher
    and ``calibration_state``."""

    def predict(self, uploads: Sequence[Upload], k: int = 5, unknown_threshold: float | None = None,
                coverage: float | None = None) -> dict:
        """The top-k classes of each upload with probabilities and cosines, and whether its
        best cosine is below the threshold (this call's, or the model's); with ``coverage``,
        each one's prediction set (``imprinting.conformal``; empty: not one of the classes)."""
        start = time.perf_counter()
        self._check_prediction(uploads, coverage)
        with self.admission.admit(len(uploads)):
            embeddings, _, _, names = self.batcher.run(uploads)
        return self._answer(start, embeddings, names, k, unknown_threshold, coverage)

    async def predict_async(self, uploads: Sequence[Upload], k: int = 5, unknown_threshold: float | None = None,
                            coverage: float | None = None) -> dict:
        """``predict`` on an event loop: the request waits for the inference worker without
        holding a thread, and is answered on the loop (``Batcher.run_async``)."""
        start = time.perf_counter()
        if coverage is None:
            self._check_prediction(uploads, coverage)  # takes no lock
        else:
            await asyncio.to_thread(self._check_prediction, uploads, coverage)
        with self.admission.admit(len(uploads)):
            embeddings, _, _, names = await self.batcher.run_async(uploads)
        if self._quick(len(names)) and self.lock.acquire(blocking=False):
            try:
                return self._answer_locked(start, embeddings, names, k, unknown_threshold, coverage)
            finally:
                self.lock.release()
        return await asyncio.to_thread(self._answer, start, embeddings, names, k, unknown_threshold, coverage)

    def _quick(self, n: int) -> bool:
        """Whether the answer for ``n`` photos is sure to be quick now (read without the lock:
        a change meanwhile only sends this answer to a thread, or the answer takes the lock)."""
        table = self.model.classes
        kept = table.calibration
        if kept is not None:
            memo = kept.peek_key()
            if memo is None or memo[0] != (id(table), table.version):  # the scores are to be computed again
                return False
        return n * len(table) * table.dim <= QUICK_PRODUCT

    def _check_prediction(self, uploads: Sequence[Upload], coverage: float | None) -> None:
        """What can be refused before any work: the number of uploads, a coverage that is not a
        share, and prediction sets asked of a service never calibrated."""
        check_uploads(uploads, self.max_images)
        if coverage is None:
            return
        if not (isinstance(coverage, (int, float)) and 0 < coverage < 1):
            raise ApiError(422, "invalid_request", f"coverage must be a share between 0 and 1, got {coverage!r}")
        with self.lock:
            if self.model.conformal is None:
                raise ApiError(409, "not_calibrated", "no calibration yet: POST /calibrate first (prediction sets "
                                                      "come from the examples taught here, scored one left out at "
                                                      "a time)")

    def _answer(self, start: float, embeddings: torch.Tensor, names: list[str], k: int,
                unknown_threshold: float | None, coverage: float | None) -> dict:
        """The answer of ``predict`` for the uploads' embeddings, from the classes of now."""
        with self.lock:
            return self._answer_locked(start, embeddings, names, k, unknown_threshold, coverage)

    def _answer_locked(self, start: float, embeddings: torch.Tensor, names: list[str], k: int,
                       unknown_threshold: float | None, coverage: float | None) -> dict:
        """``_answer`` for a caller that holds the lock."""
        if self.model.num_classes == 0:
            raise ApiError(409, "no_classes", "the model has no classes yet: teach one first")
        try:
            predictions = self.model.predict_embeddings(embeddings, k, unknown_threshold, coverage)
        except ConformalError as exc:
            raise ApiError(409, "not_calibrated", str(exc)) from None
        threshold = self.model.unknown_threshold if unknown_threshold is None else unknown_threshold
        calibration = self.calibration_state()
        results = [
            {
                "file": fname,
                "unknown": p.unknown,
                "top": [{"class": c, "probability": pr, "cosine": cos}
                        for c, pr, cos in zip(p.classes, p.probabilities, p.cosines)],
                **({"set": p.set} if coverage is not None else {}),
            }
            for fname, p in zip(names, predictions)
        ]
        return {"predictions": results, "unknown_threshold": threshold, "calibration": calibration,
                **({"coverage": coverage} if coverage is not None else {}),
                "seconds": round(time.perf_counter() - start, 4)}
