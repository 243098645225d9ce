"""AllClassJoint: an unnormalized classifier (FC + linear layer with bias, no L2
normalization) trained on base and novel classes jointly, from scratch, with the same data
and oversampling as fine-tuning."""

from __future__ import annotations

from dataclasses import replace

import torch

from imprinting.methods import Method
from imprinting.model import Embedder, ImprintModel, LinearClassifier
from imprinting.protocol import Episode, LowShotData
from imprinting.train import FeatureDataset, TrainConfig, train


class AllClassJoint(Method):
    name = "AllClassJoint"

    def __init__(self, dim: int | None = 64, cfg: TrainConfig | None = None):
        self.dim = dim
        self.cfg = replace(cfg or TrainConfig(epochs=20), balanced=True)
        self.last_history: list[dict] = []

    def fit(self, data: LowShotData, episode: Episode):
        torch.manual_seed(self.cfg.seed + episode.draw)
        embedder = Embedder(torch.nn.Identity(), data.feature_dim, self.dim, normalize=False)
        names = data.names(data.order)
        model = ImprintModel(embedder, LinearClassifier(embedder.dim, len(names)), names)
        idx = torch.cat([data.base_train_idx, episode.shots])
        cfg = replace(self.cfg, seed=self.cfg.seed + 1000 * episode.draw + episode.n)
        self.last_history = train(model, FeatureDataset(data.train_views(idx), data.train_y[idx]), cfg, progress=False)
        return lambda feats: model.classifier(model.embedder.forward_head(feats))
