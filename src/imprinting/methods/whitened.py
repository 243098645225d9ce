"""Whitened class means with a shot-corrected bias (``imprinting.heads.WhitenedMeans``): a
closed-form head on the backbone's features, no base training and no gradient step.

The shared within-class covariance comes from the base classes' training features (power
transformed, L2-normalized, centred on their mean); base and novel classes are their means.
The shrinkage is chosen by ``heads.choose`` on simulated episodes of the
base classes (never the test labels), or given. The correction is chosen for each episode, or
given: the mean of the novel recall those simulated episodes show at each correction
(``heads.novel_recall``) and of the base training images' own recall against this episode's
taught classes (``heads.base_recall``, leave one out), since how many base images one-shot
classes take grows with how many of them there are, which a base-only simulation cannot hold
(docs/heads.md). An episode's own examples join the covariance
(each around its class mean) and the shrinkage falls in proportion to the larger sample. Related: LDA; FeCAM (Goswami et al., NeurIPS
2023); SimpleShot's centred features (Wang et al., 2019).
"""

from __future__ import annotations

import numpy as np
import torch

from imprinting import heads
from imprinting.methods.base import FitResult, Method
from imprinting.protocol import Episode, LowShotData


def base_feature_map(data: LowShotData, power: float | None = 0.5) -> heads.FeatureMap:
    """The method's feature map: power transform, L2 normalization, centring on the mean of
    the base classes' transformed training features."""
    raw = data.train_feats.numpy()[data.base_train_idx.numpy()]
    return heads.FeatureMap(power, heads.FeatureMap(power)(raw).mean(axis=0))


class WhitenedMeans(Method):
    def __init__(self, power: float | None = 0.5, shrinkage: float | None = None,
                 correction: float | None = None, name: str | None = None, seed: int = 0):
        self.power, self.shrinkage, self.correction, self.seed = power, shrinkage, correction, seed
        chosen = "chosen on training data" if shrinkage is None or correction is None else \
            f"shrinkage {shrinkage}, correction {correction}"
        self.name = name or f"WhitenedMeans ({chosen})"
        self._prepared: dict = {}  # per data set: the feature map and the head (a cache)

    def _prepare(self, data: LowShotData):
        """Once per data set: the feature map, the shrinkage and corrections, the mapped training
        features and the base classes' within-class scatter."""
        key = id(data.train_feats)
        if key not in self._prepared:
            base = data.base_train_idx.numpy()
            fmap = base_feature_map(data, self.power)
            x, y = fmap(data.train_feats.numpy()[base]), data.train_y.numpy()[base]
            shrinkage, recall = self.shrinkage, None
            if shrinkage is None:
                shrinkage, _, _ = heads.choose(x, y, seed=self.seed)
            if self.correction is None:
                recall = heads.novel_recall(x, y, shrinkage, seed=self.seed)
            scatter, dof = heads.within_class_scatter(x, y)
            self._prepared = {key: (fmap, shrinkage, recall, fmap(data.train_feats.numpy()), scatter, dof)}
        return self._prepared[key]

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        """The covariance pools the base scatter with the episode's own (the novel examples
        around their class means), as a model made from all its examples at once would; the
        shrinkage chosen at the base data's size shrinks in proportion to the larger sample
        (the optimal shrinkage intensity falls as 1/N, Ledoit & Wolf 2004)."""
        fmap, shrinkage, recall, mapped, scatter, dof = self._prepare(data)
        idx = torch.cat([data.base_train_idx, episode.shots]).numpy()
        x, y = mapped[idx], data.train_y.numpy()[idx]
        nb = len(data.base_train_idx)
        extra, extra_dof = heads.within_class_scatter(mapped[episode.shots.numpy()], y[nb:])
        head = heads.WhitenedMeans((scatter + extra) / (dof + extra_dof), shrinkage * dof / (dof + extra_dof), 0.0)
        means, counts = heads.class_means(x, y, len(data.order))
        if recall is None:
            head.correction = self.correction
        else:
            head.correction = heads.episode_correction(recall, heads.base_recall(head, x[:nb], y[:nb], means, counts),
                                                       episode.n)
        w, b = head.weights(means, counts)
        w32, b32 = torch.from_numpy(w.astype(np.float32)), torch.from_numpy(b.astype(np.float32))
        return FitResult(lambda feats: torch.from_numpy(fmap(feats.numpy()).astype(np.float32)) @ w32.t() + b32,
                         info={"shrinkage": head.shrinkage, "correction": head.correction})
