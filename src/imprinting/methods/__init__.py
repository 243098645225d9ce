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

from imprinting.methods.base import FitResult, Method, Scorer
from imprinting.methods.ensemble import CosineEnsemble
from imprinting.methods.finetune import Finetune
from imprinting.methods.imprinting import Imprinting, RandomNovel
from imprinting.methods.init import ImprintInit, RandomInit
from imprinting.methods.joint import AllClassJoint
from imprinting.methods.lifted import LiftedEmbedding
from imprinting.methods.nearest import NearestNeighbour
from imprinting.methods.product_head import ProductHead
from imprinting.methods.raw import RawFeatureNCM
from imprinting.methods.whitened import WhitenedMeans

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
