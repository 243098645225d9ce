"""Imprinting: class weights from the embeddings of a few examples (paper Sec. 3.2).

The weight of a novel class is the re-normalized mean of the L2-normalized embeddings of
its examples. ``ClassSums`` keeps each class's running sum and count, so examples can be
added one call at a time, across save and reload, with the result of one batch call.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from PIL import Image


def normalized_mean(embeddings: torch.Tensor) -> torch.Tensor:
    """normalize(mean(normalize(e_i))) for embeddings (n, D) -> (D,)."""
    return F.normalize(F.normalize(embeddings.double(), dim=1).sum(dim=0), dim=0).float()


def imprint_weights(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Imprinted weights for every class at once: (C, D) from embeddings (N, D) and labels (N,).

    A class with no example gets a zero row (it cannot be imprinted).
    """
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=torch.float64)
    sums.index_add_(0, labels.long(), F.normalize(embeddings.double(), dim=1))
    return F.normalize(sums, dim=1).float()


def random_weights(num_classes: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Xavier-uniform random class vectors, (C, D): the paper's Rand baseline."""
    return nn.init.xavier_uniform_(torch.empty(num_classes, dim), generator=generator)


class ClassSums:
    """Per-class running sums of L2-normalized embeddings (float64) and example counts.

    A class with count 0 was not imprinted (a trained base class, or a random one).
    Sums grow with capacity doubling, so adding classes one at a time stays O(1) amortized.
    """

    def __init__(self, dim: int, num_classes: int = 0):
        self.dim = dim
        self._sums = torch.zeros(max(num_classes, 16), dim, dtype=torch.float64)
        self._counts = torch.zeros(max(num_classes, 16), dtype=torch.long)
        self._n = num_classes

    def __len__(self) -> int:
        return self._n

    @property
    def sums(self) -> torch.Tensor:
        return self._sums[: self._n]

    @property
    def counts(self) -> torch.Tensor:
        return self._counts[: self._n]

    def add_class(self) -> None:
        if self._n == self._sums.shape[0]:
            cap = 2 * self._n
            sums = torch.zeros(cap, self.dim, dtype=torch.float64)
            counts = torch.zeros(cap, dtype=torch.long)
            sums[: self._n] = self._sums
            counts[: self._n] = self._counts
            self._sums, self._counts = sums, counts
        self._n += 1

    def add(self, index: int, embeddings: torch.Tensor) -> None:
        self._sums[index] += F.normalize(embeddings.double(), dim=1).sum(dim=0)
        self._counts[index] += embeddings.shape[0]

    def template(self, index: int) -> torch.Tensor:
        """The imprinted weight of class ``index``: its normalized sum."""
        return F.normalize(self._sums[index], dim=0).float()

    def remove(self, index: int) -> None:
        keep = torch.ones(self._n, dtype=torch.bool)
        keep[index] = False
        self.load(self.sums[keep].clone(), self.counts[keep].clone())

    def load(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        n = sums.shape[0]
        self._sums = torch.zeros(max(n, 16), self.dim, dtype=torch.float64)
        self._counts = torch.zeros(max(n, 16), dtype=torch.long)
        self._sums[:n] = sums
        self._counts[:n] = counts
        self._n = n


@torch.no_grad()
def embed_images(
    embed: Callable[[torch.Tensor], torch.Tensor],
    images: Sequence[Image.Image],
    transform: Callable[[Image.Image], torch.Tensor],
    views: int = 1,
    batch_size: int = 32,
) -> torch.Tensor:
    """Embeddings of PIL images, (n * views, D); ``views > 1`` embeds ``views`` random versions
    of each (with a random crop + flip ``transform``: the paper's augmented imprinting)."""
    tensors = [transform(img) for img in images for _ in range(views)]
    if not tensors:
        raise ValueError("no images to embed")
    out = [embed(torch.stack(tensors[i : i + batch_size])) for i in range(0, len(tensors), batch_size)]
    return torch.cat(out)


__all__ = [
    "ClassSums",
    "embed_images",
    "imprint_weights",
    "normalized_mean",
    "random_weights",
]
