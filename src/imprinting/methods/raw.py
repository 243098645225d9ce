"""Nearest class mean on the pretrained features themselves: no base training.

Every class, base and novel, is imprinted on the backbone's own features (base classes
from all their training images, novel classes from the n shots). With no options this is
the plain baseline: L2-normalized raw features. Two cheap, well-known feature transforms
go beyond it (SimpleShot's "CL2N", Wang et al. 2019; the Tukey power transform):
  - ``power=p``: x -> x**p (features must be non-negative, as after ReLU6) before anything,
  - ``center=True``: subtract the mean feature of the base training images, then normalize.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imprinting.imprint import imprint_weights
from imprinting.methods.base import FitResult, Method
from imprinting.protocol import Episode, LowShotData


class FeatureTransform(nn.Module):
    """x -> x**power (optional) - mean (optional): a fixed layer put before normalization."""

    def __init__(self, feature_dim: int, power: float | None = None):
        super().__init__()
        self.power = power
        self.register_buffer("mean", torch.zeros(feature_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.power:
            x = x.clamp_min(0) ** self.power
        return x - self.mean

    @classmethod
    def fit(cls, data: LowShotData, power: float | None = None, center: bool = True) -> "FeatureTransform":
        """Power from the argument; mean of the transformed base training features."""
        tf = cls(data.feature_dim, power)
        if center:
            with torch.no_grad():
                tf.mean.copy_(tf(data.train_feats[data.base_train_idx]).mean(0))
        return tf


class RawFeatureNCM(Method):
    def __init__(self, center: bool = False, power: float | None = None, name: str | None = None):
        self.center = center
        self.power = power
        parts = ([f"power {power}"] if power else []) + (["centered"] if center else [])
        self.name = name or ("RawFeatureNCM" + (f" ({', '.join(parts)})" if parts else ""))

    def transform(self, data: LowShotData):
        ft = FeatureTransform.fit(data, self.power, self.center)
        return lambda x: F.normalize(ft(x), dim=1)

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        tf = self.transform(data)
        idx = torch.cat([data.base_train_idx, episode.shots])
        w = imprint_weights(tf(data.train_feats[idx]), data.train_y[idx], len(data.order))
        return FitResult(lambda feats: tf(feats) @ w.t())
