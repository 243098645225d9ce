"""A weighted sum of the cosine scores of several methods.

The best low-shot configuration found here (``results/README.md``) averages the cosines of
imprinting on a trained 512-d embedding with those of class means on the power-transformed,
centred raw backbone features: the trained embedding is better for n <= 2, the raw features for
larger n, and the sum beats both at every n. (Score-level ensembling of a trained and a
training-free classifier, as in Wang et al., "SimpleShot", 2019, for the second member.)
"""

from __future__ import annotations

from imprinting.methods.base import FitResult, Method
from imprinting.protocol import Episode, LowShotData


class CosineEnsemble(Method):
    """``members``: (method, weight) pairs; each method's scorer must return cosines."""

    def __init__(self, members: list[tuple[Method, float]], name: str = "CosineEnsemble"):
        self.members = members
        self.name = name

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        scorers = [(m.fit(data, episode).scorer, w) for m, w in self.members]
        return FitResult(lambda feats: sum(w * s(feats) for s, w in scorers))
