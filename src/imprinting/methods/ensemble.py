"""A weighted sum of the cosine scores of several methods.

The best low-shot configuration found here (``results/README.md``) averages the cosines of
imprinting on a trained 512-d embedding with those of class means on the power-transformed,
centred raw backbone features: the trained embedding is better for n <= 2, the raw features for
larger n, and the sum beats both at every n.
"""

from __future__ import annotations

from imprinting.methods import Method
from imprinting.protocol import Episode, LowShotData


class CosineEnsemble(Method):
    """``members``: (method, weight) pairs; each method's scorer must return cosines."""

    def __init__(self, members: list[tuple[Method, float]], name: str = "CosineEnsemble"):
        self.members = members
        self.name = name

    def fit(self, data: LowShotData, episode: Episode):
        scorers = [(m.fit(data, episode), w) for m, w in self.members]
        return lambda feats: sum(w * s(feats) for s, w in scorers)
