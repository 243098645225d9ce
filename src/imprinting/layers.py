"""The torch modules: the embedder (backbone -> FC -> L2) and the two classifiers.

Both classifiers keep one contract, so nothing outside switches on their type:
  ``rows``               the trainable (C, D) class-vector parameter
  ``scale_rows``         the scale parameter ((1,) or (C,)), or ``None`` (no scale)
  ``bind(rows, scale)``  adopt these tensors as the parameters' data (the model points them at
                         its class table's buffers, so training writes the table's rows)
  ``templates()``        the L2-normalized class vectors
  ``cosine(e)``          cosines of embeddings with the templates
  ``logits(cos, e)``     numpy logits for prediction, given the cosines and the embeddings
  ``forward(e)``         logits of embeddings (trainable)
  ``removable``          whether a class row can be taken out
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class CosineClassifier(nn.Module):
    """logits = s * cos(w_c, x): class vectors normalized inside ``forward``, no bias.

    Args:
        dim: embedding size D.
        num_classes: initial number of classes (rows start Xavier-uniform random).
        scale: initial value of s.
        learn_scale: train s with the rest (the paper) or keep it fixed.
        per_class_scale: one s per class instead of one shared s.

    ``forward`` expects embeddings of unit length (the embedder's output) and returns
    ``s * normalize(W) @ x``; the argmax is the nearest class template (paper Eq. 7).
    """

    removable = True

    def __init__(self, dim: int, num_classes: int = 0, scale: float = 10.0, learn_scale: bool = True,
                 per_class_scale: bool = False):
        super().__init__()
        self.dim = dim
        self.per_class_scale = per_class_scale
        self.learn_scale = learn_scale
        weight = torch.empty(num_classes, dim)
        if num_classes:
            nn.init.xavier_uniform_(weight)
        self.weight = nn.Parameter(weight)
        self.scale = nn.Parameter(torch.full((num_classes if per_class_scale else 1,), float(scale)),
                                  requires_grad=learn_scale)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def rows(self) -> nn.Parameter:
        return self.weight

    @property
    def scale_rows(self) -> nn.Parameter:
        return self.scale

    def bind(self, rows: torch.Tensor, scale: torch.Tensor | None) -> None:
        self.weight.data = rows
        if scale is not None:
            self.scale.data = scale

    def templates(self) -> torch.Tensor:
        """The L2-normalized class vectors, (C, D)."""
        return F.normalize(self.weight, dim=1)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings @ self.templates().t()

    def logits(self, cosines: np.ndarray, embeddings: torch.Tensor) -> np.ndarray:
        """Logits (numpy) of prediction, from the cosines with the class table's templates."""
        return cosines * self.scale.detach().cpu().numpy()

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(embeddings)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_classes={self.num_classes}, "
                f"per_class_scale={self.per_class_scale}, learn_scale={self.learn_scale}")


class LinearClassifier(nn.Module):
    """An ordinary linear layer with bias: the paper's unnormalized baseline."""

    removable = False  # the bias rows are not in the class table

    def __init__(self, dim: int, num_classes: int = 0):
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    @property
    def rows(self) -> nn.Parameter:
        return self.linear.weight

    @property
    def scale_rows(self) -> None:
        return None

    def bind(self, rows: torch.Tensor, scale: torch.Tensor | None) -> None:
        """New rows get a zero bias (classes are only ever appended here)."""
        old = self.linear.bias.data
        bias = torch.zeros(rows.shape[0], dtype=old.dtype, device=rows.device)
        keep = min(len(old), rows.shape[0])
        bias[:keep] = old[:keep]
        self.linear.weight.data = rows
        self.linear.bias.data = bias
        self.linear.out_features = rows.shape[0]

    def templates(self) -> torch.Tensor:
        return F.normalize(self.linear.weight, dim=1)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings, dim=1) @ self.templates().t()

    def logits(self, cosines: np.ndarray, embeddings: torch.Tensor) -> np.ndarray:
        return self.linear(embeddings).detach().cpu().numpy()

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings)


def power_transform(embeddings: torch.Tensor, power) -> torch.Tensor:
    """``normalize(sign(e) * |e| ** power)``: the embedder's power transform (``Embedder(power=...)``)."""
    return F.normalize(torch.sign(embeddings) * embeddings.abs().pow(power), dim=-1)


class Embedder(nn.Module):
    """backbone -> fully connected layer to ``dim`` -> L2 normalization.

    ``dim=None`` skips the fully connected layer: the backbone's pooled features are
    normalized directly (the transfer-learning setting, and a "beyond the paper" option).
    ``normalize=False`` leaves the embeddings unnormalized (the paper's AllClassJoint baseline).
    ``power=p`` maps the unit-length embedding e to ``normalize(sign(e) * |e| ** p)`` (the power
    transform the closed-form heads of ``imprinting.heads`` work on; kept as a buffer, so it is
    part of the weights' fingerprint and of the exported graph).

    Like timm's models, the work is split so that cached backbone features can skip the
    backbone: ``forward(x) == forward_head(forward_features(x))``.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, dim: int | None = 64, normalize: bool = True,
                 power: float | None = None):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.fc = nn.Linear(feature_dim, dim) if dim else nn.Identity()
        self.dim = dim or feature_dim
        self.normalize = normalize
        if power is not None:
            self.register_buffer("power", torch.tensor(float(power)))
        else:
            self.power = None

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, (B, feature_dim)."""
        return self.backbone(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings, (B, dim), from backbone features."""
        out = self.fc(features)
        if not self.normalize:
            return out
        out = F.normalize(out, dim=-1)
        return power_transform(out, self.power) if self.power is not None else out

    def forward(self, embeddings_or_images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(embeddings_or_images))


class Head(nn.Module):
    """What trains on cached features, FC + classifier, as one module (the backbone is not
    part of it, so DistributedDataParallel never sees the frozen weights)."""

    def __init__(self, embedder: Embedder, classifier: nn.Module):
        super().__init__()
        self.fc = embedder.fc
        self.classifier = classifier
        self._embedder = [embedder]  # a list: not registered, the backbone stays outside

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._embedder[0].forward_head(features))


def to_numpy(x, dtype=np.float32) -> np.ndarray:
    """A tensor (any device, detached) or array-like as a numpy array of ``dtype``."""
    return np.asarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x, dtype)
