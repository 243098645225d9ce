"""The product's whitened head as a protocol method: what a user's model gives, row for row.

``imprint train --head whitened`` fits ``heads.fit_head`` on the base classes' power-transformed
training embeddings (shrinkage by simulated episodes, the covariance of the base data frozen in
the model file, the correction rule with up to 512 reference rows) and makes every base class
its mean; the novel classes are then taught into the class table. This method does the same on
cached features, through ``imprinting.classes.ClassTable``, so its top-1 is the product's. It
differs from ``methods.WhitenedMeans`` (the protocol's row) in two ways: the covariance does not
pool the episode's examples (a model cannot afford that: it would change every class's row with
each new class), and the base recall is measured on the reference sample, not on every base image.
"""

from __future__ import annotations

import numpy as np
import torch

from imprinting import heads
from imprinting.classes import ClassTable
from imprinting.layers import power_transform
from imprinting.methods.base import FitResult, Method
from imprinting.protocol import Episode, LowShotData
from imprinting.rows import normalize_rows


class ProductHead(Method):
    """``pool=True`` is not the product: each episode's examples also join the covariance, as in
    ``methods.WhitenedMeans``, to measure what the model gives up by keeping the base data's."""

    def __init__(self, rule: bool = True, seed: int = 0, name: str | None = None, pool: bool = False):
        self.rule, self.seed, self.pool = rule, seed, pool
        self.name = name or ("WhitenedHead (the product's, correction rule)" if rule else
                             "WhitenedHead (the product's, frozen corrections by shot count)")
        if pool:
            self.name = self.name[:-1] + ", covariance pooled with the episode's examples)"
        self._prepared: dict = {}  # per data set: the embeddings and the fitted head (a cache)

    def _prepare(self, data: LowShotData):
        key = id(data.train_feats)
        if key not in self._prepared:
            z = power_transform(data.train_feats, 0.5).numpy()
            base, y = data.base_train_idx.numpy(), data.train_y.numpy()
            names = [str(c) for c in range(len(data.order))]
            head, _ = heads.fit_head(z[base], y[base], "whitened", "base", self.seed, names=names)
            if not self.rule:  # a file from before the rule: the corrections ``choose`` picked, frozen
                head = heads.WhitenedHead(head.centre, head.covariance, head.shrinkage, head.correction, source="base")
            dof = len(base) - len(np.unique(y[base]))  # the degrees of freedom of the head's covariance
            self._prepared = {key: (z, y, names, head, dof)}
        return self._prepared[key]

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        z, y, names, head, dof = self._prepare(data)
        if self.pool:  # the protocol's pooling (methods.WhitenedMeans.fit), the shrinkage scaled alike
            shots = episode.shots.numpy()
            extra, extra_dof = heads.within_class_scatter(z[shots] - head.centre, y[shots])
            head = heads.WhitenedHead(head.centre, (head.covariance * dof + extra) / (dof + extra_dof),
                                      head.shrinkage * dof / (dof + extra_dof), head.correction, source="base",
                                      rule=head.rule)
        idx = torch.cat([data.base_train_idx, episode.shots]).numpy()
        sums = np.zeros((len(names), z.shape[1]))
        np.add.at(sums, y[idx], z[idx].astype(np.float32).astype(np.float64))  # as the table sums them
        counts = np.bincount(y[idx], minlength=len(names))
        table = ClassTable.from_arrays(names, normalize_rows(sums), sums, counts, np.ones(1), head=head)
        w, b = table.head_rows()  # what predicting reads: the rows, the biases and the centre
        info = {"shrinkage": head.shrinkage, "correction": table.head_info()["correction"],
                "nbytes": int(w.nbytes + b.nbytes + head.centre.nbytes)}
        return FitResult(lambda feats: torch.from_numpy(table.logits(None, power_transform(feats, 0.5).numpy())),
                         info=info)
