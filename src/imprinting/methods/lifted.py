"""Embeddings trained with the lifted structured loss (Oh Song et al. 2016), through
pytorch-metric-learning's ``LiftedStructureLoss``, then used by averaging (imprinting every
class from its examples) or by nearest neighbour over stored examples.

The embedding (an FC layer on cached backbone features, then L2 normalization) is trained
once on the base classes and shared by every episode. The paper's Figure 6 compares it with
imprinting (Qi, Brown and Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018).
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_metric_learning import losses, samplers
from pytorch_metric_learning.utils import common_functions as c_f
from torch.utils.data import DataLoader

from imprinting.imprint import imprint_weights
from imprinting.methods.base import FitResult, Method
from imprinting.methods.nearest import max_cosine_per_class
from imprinting.model import Embedder
from imprinting.protocol import Episode, LowShotData
from imprinting.train import FeatureDataset


def train_lifted_embedder(data: LowShotData, dim: int = 64, epochs: int = 20, lr: float = 1e-3,
                          per_class: int = 4, batch_size: int = 64, seed: int = 0) -> Embedder:
    """The FC embedding trained with the lifted structured loss on the base classes.

    Determined by ``seed`` alone: pytorch-metric-learning's ``MPerClassSampler`` draws its
    batches from the module-wide ``NUMPY_RANDOM`` (by default numpy's unseeded global
    generator, so that runs differed); it is a seeded generator while this trains.
    """
    torch.manual_seed(seed)
    saved = c_f.NUMPY_RANDOM
    c_f.NUMPY_RANDOM = np.random.RandomState(seed)
    try:
        return _train_lifted(data, dim, epochs, lr, per_class, batch_size)
    finally:
        c_f.NUMPY_RANDOM = saved


def _train_lifted(data: LowShotData, dim, epochs, lr, per_class, batch_size) -> Embedder:
    embedder = Embedder(torch.nn.Identity(), data.feature_dim, dim)
    idx = data.base_train_idx
    dataset = FeatureDataset(data.train_views(idx), data.train_y[idx])
    # Batches of ``per_class`` examples of each of several classes (fewer classes: smaller batches).
    batch_size = min(batch_size, per_class * len(torch.unique(dataset.labels)))
    sampler = samplers.MPerClassSampler(dataset.labels, m=per_class, batch_size=batch_size,
                                        length_before_new_iter=max(len(dataset), batch_size))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True)
    loss_fn = losses.LiftedStructureLoss(neg_margin=1.0, pos_margin=0.0)
    opt = torch.optim.Adam(embedder.parameters(), lr=lr)
    embedder.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = loss_fn(embedder.forward_head(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return embedder.eval()


class LiftedEmbedding(Method):
    """``mode="average"``: class templates are mean embeddings (base from all their training
    images); ``mode="nearest"``: best cosine over stored examples."""

    def __init__(self, embedder: Embedder, mode: str = "average"):
        if mode not in ("average", "nearest"):
            raise ValueError(f"mode must be 'average' or 'nearest', got {mode!r}")
        self.embedder = embedder
        self.mode = mode
        self.name = f"Lifted-{'Avg' if mode == 'average' else 'NN'}"

    @torch.no_grad()
    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        idx = torch.cat([data.base_train_idx, episode.shots])
        emb = self.embedder.forward_head(data.train_feats[idx])
        labels = data.train_y[idx]
        num_classes = len(data.order)
        if self.mode == "average":
            w = imprint_weights(emb, labels, num_classes)
            return FitResult(lambda feats: self.embedder.forward_head(feats) @ w.t())
        return FitResult(lambda feats: max_cosine_per_class(self.embedder.forward_head(feats), emb, labels, num_classes))
