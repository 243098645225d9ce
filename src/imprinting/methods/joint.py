"""AllClassJoint: an unnormalized classifier (FC + linear layer with bias, no L2
normalization) trained on base and novel classes jointly, from scratch, with the same data
and oversampling as fine-tuning.

The paper's joint-training baseline: Qi, Brown and Lowe, "Low-Shot Learning with Imprinted
Weights", CVPR 2018 (Tables 1 and 2, "AllClassJoint").
"""

from __future__ import annotations

from dataclasses import replace

import torch

from imprinting.methods.base import FitResult, Method
from imprinting.protocol import Episode, LowShotData, linear_model
from imprinting.train import FeatureDataset, TrainConfig, train


class AllClassJoint(Method):
    name = "AllClassJoint"

    def __init__(self, dim: int | None = 64, cfg: TrainConfig | None = None):
        self.dim = dim
        self.cfg = replace(cfg or TrainConfig(epochs=20), balanced=True)

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        torch.manual_seed(episode.weights_seed(self.cfg.seed))
        model = linear_model(data.feature_dim, self.dim, data.names(data.order))
        idx = torch.cat([data.base_train_idx, episode.shots])
        cfg = replace(self.cfg, seed=episode.training_seed(self.cfg.seed))
        history = train(model, FeatureDataset(data.train_views(idx), data.train_y[idx]), cfg, progress=False)
        return FitResult(lambda feats: model.classifier(model.embedder.forward_head(feats)), history)
