"""Low-shot methods, one small module each, behind one contract.

``method.fit(data, episode) -> FitResult``: given the cached-feature data and one episode
(the novel training images of one draw at one n), a method returns
  - ``scorer``: backbone features (M, F) -> scores (M, C) over every class in ``data.order``
    (base first, then novel),
  - ``history``: the per-epoch dicts of its training (empty for training-free methods),
  - ``info``: anything else it reports about the fit (benchmarks: bytes held, iterations).
Methods never read files and keep no state between fits; the base model and options come in
through the constructor. How novel classes start (imprinted or random) is an initializer
object (``imprinting.methods.init``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from imprinting.protocol import Episode, LowShotData

Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FitResult:
    """What fitting one episode gives: the scorer, the training history, extra facts."""

    scorer: Scorer
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


class Method:
    name = "method"

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        raise NotImplementedError


from imprinting.methods.init import ImprintInit, RandomInit  # noqa: E402
from imprinting.methods.ensemble import CosineEnsemble  # noqa: E402
from imprinting.methods.finetune import Finetune  # noqa: E402
from imprinting.methods.imprinting import Imprinting, RandomNovel  # noqa: E402
from imprinting.methods.joint import AllClassJoint  # noqa: E402
from imprinting.methods.lifted import LiftedEmbedding  # noqa: E402
from imprinting.methods.nearest import NearestNeighbour  # noqa: E402
from imprinting.methods.product_head import ProductHead  # noqa: E402
from imprinting.methods.raw import RawFeatureNCM  # noqa: E402
from imprinting.methods.whitened import WhitenedMeans  # noqa: E402

__all__ = [
    "AllClassJoint",
    "CosineEnsemble",
    "Finetune",
    "FitResult",
    "ImprintInit",
    "Imprinting",
    "LiftedEmbedding",
    "Method",
    "NearestNeighbour",
    "ProductHead",
    "RandomInit",
    "RandomNovel",
    "RawFeatureNCM",
    "WhitenedMeans",
    "Scorer",
]
