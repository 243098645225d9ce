"""Whitened class means with a shot-corrected bias (``imprinting.heads.WhitenedMeans``): a
closed-form head on the backbone's features, no base training and no gradient step.

The shared within-class covariance comes from the base classes' training features (power
transformed, L2-normalized, centred on their mean); base and novel classes are their means.
The shrinkage and the correction are chosen by ``heads.choose`` on simulated episodes of the
base classes (never the test labels), or given. Related: LDA; FeCAM (Goswami et al., NeurIPS
2023); SimpleShot's centred features (Wang et al., 2019).
"""

from __future__ import annotations

import numpy as np
import torch

from imprinting import heads
from imprinting.methods import FitResult, Method
from imprinting.protocol import Episode, LowShotData


class WhitenedMeans(Method):
    def __init__(self, power: float | None = 0.5, shrinkage: float | None = None,
                 correction: float | None = None, name: str | None = None, seed: int = 0):
        self.power, self.shrinkage, self.correction, self.seed = power, shrinkage, correction, seed
        chosen = "chosen on base episodes" if shrinkage is None or correction is None else \
            f"shrinkage {shrinkage}, correction {correction}"
        self.name = name or f"WhitenedMeans ({chosen})"
        self._prepared: dict = {}  # per data set: the feature map and the head (a cache)

    def _prepare(self, data: LowShotData):
        """Once per data set: the feature map, the head, the mapped training features and the
        base classes' scoring rows (an episode then computes only its novel classes' rows)."""
        key = id(data.train_feats)
        if key not in self._prepared:
            base = data.base_train_idx.numpy()
            raw = data.train_feats.numpy()[base]
            plain = heads.FeatureMap(self.power)
            fmap = heads.FeatureMap(self.power, plain(raw).mean(axis=0))
            x, y = fmap(raw), data.train_y.numpy()[base]
            shrinkage, correction = self.shrinkage, self.correction
            if shrinkage is None or correction is None:
                a, c, _ = heads.choose(x, y, seed=self.seed)
                shrinkage = a if shrinkage is None else shrinkage
                correction = c if correction is None else correction
            scatter, dof = heads.within_class_scatter(x, y)
            head = heads.WhitenedMeans(scatter / dof, shrinkage, correction)
            mapped = fmap(data.train_feats.numpy())
            means, counts = heads.class_means(x, y, len(data.order))
            w, b = head.weights(means, counts)
            self._prepared = {key: (fmap, head, mapped, w, b)}
        return self._prepared[key]

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        fmap, head, mapped, w, b = self._prepare(data)
        shots = episode.shots.numpy()
        y = data.train_y.numpy()[shots]
        novel = np.unique(y)
        means, counts = heads.class_means(mapped[shots], y, len(data.order))
        wn, bn = head.weights(means[novel], counts[novel])
        w, b = w.copy(), b.copy()
        w[novel], b[novel] = wn, bn
        w32, b32 = torch.from_numpy(w.astype(np.float32)), torch.from_numpy(b.astype(np.float32))
        return FitResult(lambda feats: torch.from_numpy(fmap(feats.numpy()).astype(np.float32)) @ w32.t() + b32,
                         info={"shrinkage": head.shrinkage, "correction": head.correction})
