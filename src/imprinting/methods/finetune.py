"""Fine-tuning from imprinted (Imprinting+FT) or random (Rand+FT) novel weights.

Qi, Brown and Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018 (Sec. 3.3 and
Tables 1-3). Trains on every base training image plus the n novel examples, novel classes
oversampled so that every class is equally likely in a batch, with augmentation (the
cached random crop + flip views). On cached features the backbone stays frozen: the FC
layer, the class vectors and the scale train. With ``record_history`` the test accuracy
after each epoch is in the result's history (the paper's Figures 3 and 4).

``transfer=True`` is the transfer-learning setting of the paper's Table 3: the final layer
holds the novel classes only (imprinted or random) and fine-tuning sees the n novel
examples only; the scores of base classes are -inf, so only ``novel_only`` is meaningful.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from imprinting.methods.base import FitResult, Method
from imprinting.methods.imprinting import scorer
from imprinting.methods.init import ImprintInit
from imprinting.model import ImprintModel
from imprinting.protocol import Episode, LowShotData, accuracies, novel_only_model
from imprinting.train import FeatureDataset, TrainConfig, train


class Finetune(Method):
    """``init``: an initializer (``ImprintInit()`` or ``RandomInit()``); the name follows it
    ("Imprinting+FT", "Rand+FT")."""

    def __init__(self, base: ImprintModel, init=None, cfg: TrainConfig | None = None,
                 record_history: bool = True, transfer: bool = False):
        self.base = base
        self.init = init or ImprintInit()
        self.cfg = replace(cfg or TrainConfig(epochs=20), balanced=True)
        self.record_history = record_history
        self.transfer = transfer
        self.name = f"{self.init.name}+FT"

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        model = self.init.add_novel(self.base, data, episode)
        if self.transfer:
            model = novel_only_model(model, data)
            idx, offset = episode.shots, data.num_base
        else:
            idx, offset = torch.cat([data.base_train_idx, episode.shots]), 0
        dataset = FeatureDataset(data.train_views(idx), data.train_y[idx] - offset)
        cfg = replace(self.cfg, seed=episode.training_seed(self.cfg.seed))
        history = train(model, dataset, cfg, self._evaluate(data) if self.record_history else None, progress=False)
        return FitResult(self._scorer(model, data), history)

    def _scorer(self, model: ImprintModel, data: LowShotData):
        return _pad_base(scorer(model), data.num_base) if self.transfer else scorer(model)

    def _evaluate(self, data: LowShotData):
        # the model handed in: on a copy when training runs on another device (torchrun + GPUs)
        return lambda m: accuracies(self._scorer(m, data)(data.test_feats), data)


def _pad_base(score, num_base: int):
    """Scores over novel classes -> scores over base + novel, base columns -inf."""
    def padded(feats):
        s = score(feats)
        return torch.cat([s.new_full((len(s), num_base), float("-inf")), s], dim=1)
    return padded
