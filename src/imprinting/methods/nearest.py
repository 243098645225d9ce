"""Nearest neighbour over every stored novel example embedding (the metric-learning way).

A class's score is its best cosine: for a novel class, over its n stored examples; for a
base class, with its trained weight (``base_from_examples=True``: over every stored base
training example instead). With n = 1 this equals imprinting. The paper compares against it in Figure 6 (Qi, Brown and
Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018, Sec. 4.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imprinting.methods.base import FitResult, Method
from imprinting.model import ImprintModel
from imprinting.protocol import Episode, LowShotData, embed


def max_cosine_per_class(queries: torch.Tensor, examples: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """(M, C): for each query, the highest cosine with any example of each class (-inf if none)."""
    cos = F.normalize(queries, dim=1) @ F.normalize(examples, dim=1).t()
    out = torch.full((queries.shape[0], num_classes), float("-inf"))
    return out.scatter_reduce(1, labels.expand(queries.shape[0], -1), cos, reduce="amax")


class NearestNeighbour(Method):
    def __init__(self, base: ImprintModel, base_from_examples: bool = False, name: str = "NearestNeighbour"):
        self.base = base
        self.base_from_examples = base_from_examples
        self.name = name

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        model = self.base
        novel_emb = embed(model, data.train_feats[episode.shots])
        novel_y = data.train_y[episode.shots]
        if self.base_from_examples:
            base_emb = embed(model, data.train_feats[data.base_train_idx])
            base_y = data.train_y[data.base_train_idx]
        else:
            base_emb = model.classifier.templates().detach()
            base_y = torch.arange(data.num_base)
        examples = torch.cat([base_emb, novel_emb])
        labels = torch.cat([base_y, novel_y])
        num_classes = len(data.order)
        return FitResult(lambda feats: max_cosine_per_class(embed(model, feats), examples, labels, num_classes))
