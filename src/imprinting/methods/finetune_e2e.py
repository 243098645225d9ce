"""End-to-end fine-tuning: the whole network, backbone included, trains on every base
training image plus the n novel examples (novel classes oversampled), starting from
imprinted (Imprinting+FT) or random (Rand+FT) novel weights: the paper's fine-tuning
(Qi, Brown and Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018, Sec. 3.3),
whole network included.

Unlike the other methods this one needs the images, not cached features: it takes the
preprocessed train and test images as tensors aligned with ``data.train`` and ``data.test``,
and its scorer embeds the test images with the fine-tuned backbone (the cached features
passed to the scorer are ignored).

``crop``: the tensors hold a centre square of each image resized as for testing
(``imprinting.experiments.data.training_square``: e.g. 180 x 180 of an image resized to 183 for
a 160 crop); training draws a random ``crop`` window of it, flipped half of the time, and
imprinting and testing use the centre window, which is the test-time centre crop. (The
random windows move within the square only, not along the whole long side as the file
transforms' random crops do.) Without ``crop`` the tensors are used as they are
(Omniglot's 28 x 28 characters).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torchvision.transforms.functional import center_crop

from imprinting.methods.base import FitResult, Method
from imprinting.methods.init import ImprintInit
from imprinting.model import ImprintModel
from imprinting.protocol import Episode, LowShotData, accuracies
from imprinting.train import TensorImageDataset, TrainConfig, train


@torch.no_grad()
def _embed(model: ImprintModel, images: torch.Tensor, crop: int | None = None, batch: int = 128) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        out.append(model.embed(center_crop(x, [crop, crop]) if crop else x))
    return torch.cat(out)


class EndToEndFinetune(Method):
    """``init``: an initializer (``ImprintInit()`` or ``RandomInit()``); the shots are
    imprinted from their images through the (not yet fine-tuned) backbone."""

    def __init__(self, model: ImprintModel, train_images: torch.Tensor, test_images: torch.Tensor,
                 init=None, cfg: TrainConfig | None = None, record_history: bool = True,
                 crop: int | None = None, progress: bool = False):
        self.model = model
        self.train_images = train_images
        self.test_images = test_images
        self.init = init or ImprintInit()
        self.cfg = replace(cfg or TrainConfig(epochs=5), balanced=True)
        self.record_history = record_history
        self.crop = crop
        self.progress = progress  # per-epoch bars (an episode can take minutes)
        self.name = f"{self.init.name}+FT (end to end)"

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        start = copy.deepcopy(self.model).eval()  # embeds the shots in eval mode, whatever mode it was left in
        model = self.init.add_novel(start, data, episode,
                                    lambda m, shots: _embed(m, self.train_images[shots], self.crop))
        idx = torch.cat([data.base_train_idx, episode.shots])
        dataset = TensorImageDataset(self.train_images[idx], data.train_y[idx], self.crop)
        cfg = replace(self.cfg, seed=episode.training_seed(self.cfg.seed))

        def evaluate(m):
            return accuracies(m.classifier(_embed(m, self.test_images, self.crop)), data)

        history = train(model, dataset, cfg, evaluate if self.record_history else None, progress=self.progress)
        scores = model.classifier(_embed(model, self.test_images, self.crop)).detach()
        return FitResult(lambda feats: scores, history)
