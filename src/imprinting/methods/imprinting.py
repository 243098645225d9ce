"""Imprinting (and Imprinting+Aug), and random novel weights (Rand-noFT): forward passes only.

Qi, Brown and Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018 (Sec. 3.2, and
the Rand-noFT baseline of Tables 1 and 2).
"""

from __future__ import annotations

from imprinting.methods.base import FitResult, Method
from imprinting.methods.init import ImprintInit, RandomInit
from imprinting.model import ImprintModel
from imprinting.protocol import Episode, LowShotData


def scorer(model: ImprintModel, cosine: bool = False):
    """Logits (s * cos), or with ``cosine`` the cosines alone."""
    if cosine:
        return lambda feats: model.classifier.cosine(model.embedder.forward_head(feats))
    return lambda feats: model.classifier(model.embedder.forward_head(feats))


class Imprinting(Method):
    """Novel weights = normalized mean embedding of the n examples (``augment``: of their views)."""

    def __init__(self, base: ImprintModel, augment: bool = False, cosine: bool = False):
        self.base = base
        self.init = ImprintInit(augment)
        self.cosine = cosine
        self.name = self.init.name

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        return FitResult(scorer(self.init.add_novel(self.base, data, episode), self.cosine))


class RandomNovel(Method):
    """Xavier-uniform random novel weights, no training (Rand-noFT)."""

    name = "Rand-noFT"

    def __init__(self, base: ImprintModel):
        self.base = base

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        return FitResult(scorer(RandomInit().add_novel(self.base, data, episode)))
