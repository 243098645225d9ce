"""Low-shot methods, one small module each, behind one interface.

A method takes the cached-feature data and one episode (the novel training images of one
draw at one n) and returns a scorer: backbone features (M, F) -> scores (M, C) over every
class in ``data.order`` (base first, then novel). Methods never read files; the base model
and options come in through the constructor.
"""

from __future__ import annotations

from typing import Callable

import torch

from imprinting.protocol import Episode, LowShotData

Scorer = Callable[[torch.Tensor], torch.Tensor]


class Method:
    name = "method"

    def fit(self, data: LowShotData, episode: Episode) -> Scorer:
        raise NotImplementedError


from imprinting.methods.ensemble import CosineEnsemble  # noqa: E402
from imprinting.methods.finetune import Finetune  # noqa: E402
from imprinting.methods.imprinting import Imprinting, RandomNovel  # noqa: E402
from imprinting.methods.joint import AllClassJoint  # noqa: E402
from imprinting.methods.lifted import LiftedEmbedding  # noqa: E402
from imprinting.methods.nearest import NearestNeighbour  # noqa: E402
from imprinting.methods.raw import RawFeatureNCM  # noqa: E402

__all__ = [
    "AllClassJoint",
    "CosineEnsemble",
    "Finetune",
    "Imprinting",
    "LiftedEmbedding",
    "Method",
    "NearestNeighbour",
    "RandomNovel",
    "RawFeatureNCM",
    "Scorer",
]
