"""What a prediction returns, and the one top-k rule both runtimes use (numpy, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from imprinting.conformal import prediction_set
from imprinting.errors import UnknownClassError  # noqa: F401  (part of this module's API)


@dataclass
class Prediction:
    """Top-k answer for one image: names, softmax probabilities and cosine scores."""

    classes: list[str]
    probabilities: list[float]
    cosines: list[float]
    unknown: bool = False
    set: list[str] | None = None  # with a coverage: the classes it could be (empty: none of them)

    @property
    def top(self) -> str:
        return self.classes[0]


def top_k(cosines: np.ndarray, logits: np.ndarray, name_at: Callable[[int], str], k: int,
          threshold: float | None, set_q: float | None = None) -> list[Prediction]:
    """The ``k`` most probable classes of each row (softmax of ``logits``), with their
    cosines; ``unknown`` when the best cosine is below ``threshold``. Ties go to the lower
    class index. Costs O(C) per row plus O(k log k), so 100,000 classes stay fast.
    ``set_q``: each prediction's set holds every class whose 1 - probability is at most it
    (``imprinting.conformal``), most probable first."""
    logits = np.asarray(logits, np.float32)
    c = logits.shape[1]
    k = max(1, min(int(k), c))
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    denom = z.sum(axis=1, dtype=np.float64)
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k < c else np.tile(np.arange(c), (len(logits), 1))
    out = []
    best = np.asarray(cosines).max(axis=1)
    for l_row, z_row, total, c_row, cand, top in zip(logits, z, denom, cosines, part, best):
        order = cand[np.lexsort((cand, -l_row[cand]))]  # by logit: probabilities can underflow to 0
        unknown = threshold is not None and float(top) < threshold
        members = None
        if set_q is not None:
            members = [name_at(int(i)) for i in prediction_set(z_row / total, set_q)]
        out.append(Prediction([name_at(int(i)) for i in order], [float(z_row[i] / total) for i in order],
                              [float(c_row[i]) for i in order], bool(unknown), members))
    return out
