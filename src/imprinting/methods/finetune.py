"""Fine-tuning from imprinted (Imprinting+FT) or random (Rand+FT) novel weights.

Trains on every base training image plus the n novel examples, novel classes oversampled
so that every class is equally likely in a batch, with augmentation (the cached random
crop + flip views). On cached features the backbone stays frozen: the FC layer, the
class vectors and the scale train. Test accuracy after each epoch is kept in
``last_history`` (the paper's Figures 3 and 4).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from imprinting.methods import Method
from imprinting.methods.imprinting import scorer, with_novel_classes
from imprinting.model import ImprintModel
from imprinting.protocol import Episode, LowShotData, accuracies
from imprinting.train import FeatureDataset, TrainConfig, train


class Finetune(Method):
    def __init__(self, base: ImprintModel, init: str = "imprint", cfg: TrainConfig | None = None,
                 record_history: bool = True):
        if init not in ("imprint", "random"):
            raise ValueError(f"init must be 'imprint' or 'random', got {init!r}")
        self.base = base
        self.init = init
        self.cfg = replace(cfg or TrainConfig(epochs=20), balanced=True)
        self.record_history = record_history
        self.name = "Imprinting+FT" if init == "imprint" else "Rand+FT"
        self.last_history: list[dict] = []

    def fit(self, data: LowShotData, episode: Episode):
        model = with_novel_classes(self.base, data, episode, self.init)
        idx = torch.cat([data.base_train_idx, episode.shots])
        dataset = FeatureDataset(data.train_views(idx), data.train_y[idx])
        cfg = replace(self.cfg, seed=self.cfg.seed + 1000 * episode.draw + episode.n)

        def evaluate(m):
            return accuracies(m.classifier(m.embedder.forward_head(data.test_feats)), data)

        self.last_history = train(model, dataset, cfg, evaluate if self.record_history else None, progress=False)
        return scorer(model)
