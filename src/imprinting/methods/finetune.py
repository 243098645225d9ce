"""Fine-tuning from imprinted (Imprinting+FT) or random (Rand+FT) novel weights.

Trains on every base training image plus the n novel examples, novel classes oversampled
so that every class is equally likely in a batch, with augmentation (the cached random
crop + flip views). On cached features the backbone stays frozen: the FC layer, the
class vectors and the scale train. Test accuracy after each epoch is kept in
``last_history`` (the paper's Figures 3 and 4).

``transfer=True`` is the transfer-learning setting of the paper's Table 3: the final layer
holds the novel classes only (imprinted or random) and fine-tuning sees the n novel
examples only; the scores of base classes are -inf, so only ``novel_only`` is meaningful.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from imprinting.methods import Method
from imprinting.methods.imprinting import scorer, with_novel_classes
from imprinting.model import CosineClassifier, ImprintModel
from imprinting.protocol import Episode, LowShotData, accuracies
from imprinting.train import FeatureDataset, TrainConfig, train


def novel_classes_only(model: ImprintModel, data: LowShotData) -> ImprintModel:
    """The same embedder under a classifier of the novel rows of ``model`` alone (base first,
    then novel, as ``with_novel_classes`` builds it)."""
    old = model.classifier
    clf = CosineClassifier(old.dim, 0, float(old.scale.detach().mean()), old.learn_scale, old.per_class_scale)
    clf.add_classes(old.weight.detach()[data.num_base :])
    if old.per_class_scale:
        with torch.no_grad():
            clf.scale.copy_(old.scale[data.num_base :])
    return ImprintModel(model.embedder, clf, data.names(data.novel), model.config)


class Finetune(Method):
    def __init__(self, base: ImprintModel, init: str = "imprint", cfg: TrainConfig | None = None,
                 record_history: bool = True, transfer: bool = False):
        if init not in ("imprint", "random"):
            raise ValueError(f"init must be 'imprint' or 'random', got {init!r}")
        self.base = base
        self.init = init
        self.cfg = replace(cfg or TrainConfig(epochs=20), balanced=True)
        self.record_history = record_history
        self.transfer = transfer
        self.name = "Imprinting+FT" if init == "imprint" else "Rand+FT"
        self.last_history: list[dict] = []

    def fit(self, data: LowShotData, episode: Episode):
        model = with_novel_classes(self.base, data, episode, self.init)
        if self.transfer:
            model = novel_classes_only(model, data)
            idx, offset = episode.shots, data.num_base
        else:
            idx, offset = torch.cat([data.base_train_idx, episode.shots]), 0
        dataset = FeatureDataset(data.train_views(idx), data.train_y[idx] - offset)
        cfg = replace(self.cfg, seed=self.cfg.seed + 1000 * episode.draw + episode.n)
        self.last_history = train(model, dataset, cfg, self._evaluate(data) if self.record_history else None,
                                  progress=False)
        return self._scorer(model, data)

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
