"""Low-shot learning with imprinted weights (Qi, Brown, Lowe, CVPR 2018)."""

from imprinting.backbones import create_backbone
from imprinting.checkpoint import load, save
from imprinting.imprint import ClassSums, imprint_weights, normalized_mean, random_weights
from imprinting.model import CosineClassifier, Embedder, ImprintModel, LinearClassifier, Prediction, create_model

__version__ = "0.1.0"

__all__ = [
    "ClassSums",
    "CosineClassifier",
    "Embedder",
    "ImprintModel",
    "LinearClassifier",
    "Prediction",
    "create_backbone",
    "create_model",
    "imprint_weights",
    "load",
    "normalized_mean",
    "random_weights",
    "save",
]
