"""How the novel classes start: imprinted weights or random ones.

An initializer adds one class per novel class, in ``data.order``, to a copy of the model it
is given: ``ImprintInit`` imprints each from its shots (Qi, Brown and Lowe, "Low-Shot
Learning with Imprinted Weights", CVPR 2018, Sec. 3.2: the normalized mean of the
embeddings), ``RandomInit`` draws Xavier-uniform vectors seeded by the episode (the paper's
"Rand" baselines). Fine-tuning (frozen or end to end) takes either.
"""

from __future__ import annotations

from typing import Callable

import torch

from imprinting.model import ImprintModel
from imprinting.protocol import Episode, LowShotData, copy_model, embed

# (model, shot indices into data.train) -> their embeddings (k, D)
Embed = Callable[[ImprintModel, torch.Tensor], torch.Tensor]


class ImprintInit:
    """Novel weights = normalized mean embedding of the n shots (``augment``: of their
    cached random crop + flip views, all averaged)."""

    def __init__(self, augment: bool = False):
        self.augment = augment
        self.name = "Imprinting+Aug" if augment else "Imprinting"

    def add_novel(self, model: ImprintModel, data: LowShotData, episode: Episode,
                  embed_shots: Embed | None = None) -> ImprintModel:
        """A copy of ``model`` with the novel classes imprinted. ``embed_shots``: how to embed
        the shots (default: the model's FC on their cached features; end-to-end fine-tuning
        runs their images through the backbone)."""
        model = copy_model(model)
        shots = episode.shots
        labels = data.train_y[shots]
        if self.augment:
            if data.train_aug is None:
                raise ValueError("Imprinting+Aug needs cached augmented views (train_aug)")
            views = data.train_aug[shots]  # (m, k, F)
            emb = embed(model, views.reshape(-1, views.shape[-1]))
            labels = labels.repeat_interleave(views.shape[1])
        elif embed_shots is not None:
            emb = embed_shots(model, shots)
        else:
            emb = embed(model, data.train_feats[shots])
        for c, name in zip(range(data.num_base, len(data.order)), data.names(data.novel)):
            model.add_class(name, emb[labels == c])
        return model


class RandomInit:
    """Xavier-uniform random novel weights, one generator per episode (``Episode.init_seed``)."""

    name = "Rand"

    def add_novel(self, model: ImprintModel, data: LowShotData, episode: Episode,
                  embed_shots: Embed | None = None) -> ImprintModel:
        """A copy of ``model`` with random novel classes (``embed_shots`` is not needed)."""
        model = copy_model(model)
        g = torch.Generator().manual_seed(episode.init_seed)
        for name in data.names(data.novel):
            model.add_random_class(name, g)
        return model
