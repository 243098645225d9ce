"""What a prediction returns, and the one top-k rule both runtimes use (numpy, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from imprinting.errors import UnknownClassError  # noqa: F401  (part of this module's API)


@dataclass
class Prediction:
    """Top-k answer for one image: names, softmax probabilities and cosine scores."""

    classes: list[str]
    probabilities: list[float]
    cosines: list[float]
    unknown: bool = False

    @property
    def top(self) -> str:
        return self.classes[0]


def top_k(cosines: np.ndarray, logits: np.ndarray, name_at: Callable[[int], str], k: int,
          threshold: float | None) -> list[Prediction]:
    """The ``k`` most probable classes of each row (softmax of ``logits``), with their
    cosines; ``unknown`` when the best cosine is below ``threshold``. Ties go to the lower
    class index. Costs O(C) per row plus O(k log k), so 100,000 classes stay fast."""
    logits = np.asarray(logits, np.float64)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    c = probs.shape[1]
    k = max(1, min(int(k), c))
    part = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < c else np.tile(np.arange(c), (len(probs), 1))
    out = []
    for p_row, c_row, cand in zip(probs, cosines, part):
        order = cand[np.lexsort((cand, -p_row[cand]))]
        unknown = threshold is not None and float(c_row.max()) < threshold
        out.append(Prediction([name_at(int(i)) for i in order], [float(p_row[i]) for i in order],
                              [float(c_row[i]) for i in order], bool(unknown)))
    return out
