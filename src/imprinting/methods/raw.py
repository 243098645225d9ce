"""Nearest class mean on the raw L2-normalized pretrained features: no base training.

Every class, base and novel, is imprinted on the backbone's own features (base classes
from all their training images, novel classes from the n shots). This is the transfer
baseline that a trained embedding must beat to be worth training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imprinting.imprint import imprint_weights
from imprinting.methods import Method
from imprinting.protocol import Episode, LowShotData


class RawFeatureNCM(Method):
    name = "RawFeatureNCM"

    def fit(self, data: LowShotData, episode: Episode):
        idx = torch.cat([data.base_train_idx, episode.shots])
        w = imprint_weights(data.train_feats[idx], data.train_y[idx], len(data.order))
        return lambda feats: F.normalize(feats, dim=1) @ w.t()
