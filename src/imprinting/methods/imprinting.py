"""Imprinting (and Imprinting+Aug), and random novel weights (Rand-noFT): forward passes only."""

from __future__ import annotations

import torch

from imprinting.methods import Method
from imprinting.protocol import Episode, LowShotData, copy_model, embed
from imprinting.model import ImprintModel


def with_novel_classes(base: ImprintModel, data: LowShotData, episode: Episode, how: str) -> ImprintModel:
    """A copy of the base model with one weight per novel class, imprinted or random.

    ``how``: "imprint" (centre crops), "imprint_aug" (the cached random crop + flip views of
    each image, averaged), or "random" (Xavier uniform, seeded by the episode).
    """
    model = copy_model(base)
    shots = episode.shots
    labels = data.train_y[shots]
    if how == "random":
        g = torch.Generator().manual_seed(1000 * episode.seed + episode.draw)
        for c, name in zip(range(data.num_base, len(data.order)), data.names(data.novel)):
            model.add_random_class(name, g)
        return model
    if how == "imprint_aug":
        if data.train_aug is None:
            raise ValueError("Imprinting+Aug needs cached augmented views (train_aug)")
        views = data.train_aug[shots]  # (m, k, F)
        emb = embed(model, views.reshape(-1, views.shape[-1]))
        labels = labels.repeat_interleave(views.shape[1])
    else:
        emb = embed(model, data.train_feats[shots])
    for c, name in zip(range(data.num_base, len(data.order)), data.names(data.novel)):
        model.add_class(name, emb[labels == c])
    return model


def scorer(model: ImprintModel, cosine: bool = False):
    """Logits (s * cos), or with ``cosine`` the cosines alone."""
    if cosine:
        return lambda feats: model.classifier.cosine(model.embedder.forward_head(feats))
    return lambda feats: model.classifier(model.embedder.forward_head(feats))


class Imprinting(Method):
    """Novel weights = normalized mean embedding of the n examples (``augment``: of their views)."""

    def __init__(self, base: ImprintModel, augment: bool = False, cosine: bool = False):
        self.base = base
        self.augment = augment
        self.cosine = cosine
        self.name = "Imprinting+Aug" if augment else "Imprinting"

    def fit(self, data: LowShotData, episode: Episode):
        model = with_novel_classes(self.base, data, episode, "imprint_aug" if self.augment else "imprint")
        return scorer(model, self.cosine)


class RandomNovel(Method):
    """Xavier-uniform random novel weights, no training (Rand-noFT)."""

    name = "Rand-noFT"

    def __init__(self, base: ImprintModel):
        self.base = base

    def fit(self, data: LowShotData, episode: Episode):
        return scorer(with_novel_classes(self.base, data, episode, "random"))
