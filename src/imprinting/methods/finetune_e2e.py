"""End-to-end fine-tuning: the whole network, backbone included, trains on every base
training image plus the n novel examples (novel classes oversampled), starting from
imprinted (Imprinting+FT) or random (Rand+FT) novel weights.

Unlike the other methods this one needs the images, not cached features: it takes the
preprocessed train and test images as tensors aligned with ``data.train`` and ``data.test``
(small images such as Omniglot's fit in memory), and its scorer embeds the test images with
the fine-tuned backbone (the cached features passed to the scorer are ignored).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from imprinting.methods import Method
from imprinting.model import ImprintModel
from imprinting.protocol import Episode, LowShotData, accuracies
from imprinting.train import TensorImageDataset, TrainConfig, train


@torch.no_grad()
def _embed(model: ImprintModel, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([model.embed(images[i : i + batch]) for i in range(0, len(images), batch)])


class EndToEndFinetune(Method):
    def __init__(self, model: ImprintModel, train_images: torch.Tensor, test_images: torch.Tensor,
                 init: str = "imprint", cfg: TrainConfig | None = None, record_history: bool = True):
        if init not in ("imprint", "random"):
            raise ValueError(f"init must be 'imprint' or 'random', got {init!r}")
        self.model = model
        self.train_images = train_images
        self.test_images = test_images
        self.init = init
        self.cfg = replace(cfg or TrainConfig(epochs=5), balanced=True)
        self.record_history = record_history
        self.name = ("Imprinting+FT" if init == "imprint" else "Rand+FT") + " (end to end)"
        self.last_history: list[dict] = []

    def fit(self, data: LowShotData, episode: Episode):
        model = copy.deepcopy(self.model).eval()
        shots = episode.shots
        labels = data.train_y[shots]
        names = data.names(data.novel)
        if self.init == "imprint":
            emb = _embed(model, self.train_images[shots])
            for c, name in zip(range(data.num_base, len(data.order)), names):
                model.add_class(name, emb[labels == c])
        else:
            g = torch.Generator().manual_seed(1000 * episode.seed + episode.draw)
            for name in names:
                model.add_random_class(name, g)
        idx = torch.cat([data.base_train_idx, shots])
        dataset = TensorImageDataset(self.train_images[idx], data.train_y[idx])
        cfg = replace(self.cfg, seed=self.cfg.seed + 1000 * episode.draw + episode.n)

        def evaluate(m):
            return accuracies(m.classifier(_embed(m, self.test_images)), data)

        self.last_history = train(model, dataset, cfg, evaluate if self.record_history else None, progress=False)
        scores = model.classifier(_embed(model, self.test_images)).detach()
        return lambda feats: scores
