"""The model: an embedder (backbone -> FC -> L2), a classifier, and the class names.

Data flows one way::

    image -> backbone -> Embedder.forward_head (FC -> L2) -> CosineClassifier -> logits

``ImprintModel`` ties the parts together and owns the per-class running sums that
imprinting uses (see ``imprinting.imprint``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imprinting.imprint import ClassSums, normalized_mean
from imprinting.prediction import Prediction, UnknownClassError  # noqa: F401  (part of this API)


class GrowableRows:
    """A (rows, dim) tensor that grows by appending rows in amortized O(dim) time.

    Rows live in a buffer with spare capacity that doubles when full, so adding
    10,000 rows one at a time copies O(10,000) rows in all, not O(10,000^2).
    ``view()`` returns the used rows, sharing memory with the buffer.
    """

    def __init__(self, initial: torch.Tensor):
        self._buffer = initial.detach().clone()
        self._rows = initial.shape[0]

    def __len__(self) -> int:
        return self._rows

    def view(self) -> torch.Tensor:
        return self._buffer[: self._rows]

    def sync(self, current: torch.Tensor) -> None:
        """Adopt ``current`` if a caller replaced the rows behind our back (e.g. ``.data =``)."""
        if current.data_ptr() != self._buffer.data_ptr() or current.shape[0] != self._rows:
            self._buffer = current.detach().clone()
            self._rows = current.shape[0]

    def append(self, rows: torch.Tensor) -> torch.Tensor:
        n, k = self._rows, rows.shape[0]
        if n + k > self._buffer.shape[0]:
            capacity = max(2 * self._buffer.shape[0], n + k, 16)
            grown = self._buffer.new_empty((capacity, *self._buffer.shape[1:]))
            grown[:n] = self._buffer[:n]
            self._buffer = grown
        self._buffer[n : n + k] = rows.to(self._buffer)
        self._rows = n + k
        return self.view()


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
    ``add_classes`` appends rows; the ``weight`` parameter object is replaced by it, so
    build optimizers after adding classes.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int = 0,
        scale: float = 10.0,
        learn_scale: bool = True,
        per_class_scale: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.per_class_scale = per_class_scale
        self.learn_scale = learn_scale
        self._init_scale = float(scale)
        weight = torch.empty(num_classes, dim)
        if num_classes:
            nn.init.xavier_uniform_(weight)
        self._rows = GrowableRows(weight)
        self.weight = nn.Parameter(self._rows.view())
        scale_init = torch.full((num_classes if per_class_scale else 1,), float(scale))
        self._scale_rows = GrowableRows(scale_init)
        self.scale = nn.Parameter(self._scale_rows.view(), requires_grad=learn_scale)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def templates(self) -> torch.Tensor:
        """The L2-normalized class vectors, (C, D)."""
        return F.normalize(self.weight, dim=1)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings @ self.templates().t()

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(embeddings)

    def add_classes(self, weights: torch.Tensor) -> None:
        """Append class vectors (k, D); existing rows are not touched."""
        if weights.ndim != 2 or weights.shape[1] != self.dim:
            raise ValueError(f"class weights must have shape (k, {self.dim}), got {tuple(weights.shape)}")
        with torch.no_grad():
            self._rows.sync(self.weight)
            self.weight = nn.Parameter(self._rows.append(weights), requires_grad=self.weight.requires_grad)
            if self.per_class_scale:
                self._scale_rows.sync(self.scale)
                fill = self.scale.mean() if len(self.scale) else torch.tensor(self._init_scale)
                new_scale = fill.detach().expand(weights.shape[0]).clone()
                self.scale = nn.Parameter(self._scale_rows.append(new_scale), requires_grad=self.learn_scale)

    def set_class_weight(self, index: int, weight: torch.Tensor) -> None:
        """Overwrite one class vector in place; other rows keep every bit."""
        with torch.no_grad():
            self.weight[index] = weight

    def resize_(self, num_classes: int) -> None:
        """Make room for exactly ``num_classes`` rows (values to be loaded after)."""
        with torch.no_grad():
            self._rows = GrowableRows(torch.zeros(num_classes, self.dim))
            self.weight = nn.Parameter(self._rows.view(), requires_grad=self.weight.requires_grad)
            if self.per_class_scale:
                self._scale_rows = GrowableRows(torch.zeros(num_classes))
                self.scale = nn.Parameter(self._scale_rows.view(), requires_grad=self.learn_scale)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_classes={self.num_classes}, "
            f"per_class_scale={self.per_class_scale}, learn_scale={self.learn_scale}"
        )


class LinearClassifier(nn.Module):
    """An ordinary linear layer with bias: the paper's unnormalized baseline."""

    def __init__(self, dim: int, num_classes: int = 0):
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings)

    def add_classes(self, weights: torch.Tensor) -> None:
        old = self.linear
        new = nn.Linear(self.dim, old.out_features + weights.shape[0])
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.weight[old.out_features :] = weights
            new.bias[: old.out_features] = old.bias
            new.bias[old.out_features :] = 0
        self.linear = new

    def resize_(self, num_classes: int) -> None:
        self.linear = nn.Linear(self.dim, num_classes)


class Embedder(nn.Module):
    """backbone -> fully connected layer to ``dim`` -> L2 normalization.

    ``dim=None`` skips the fully connected layer: the backbone's pooled features are
    normalized directly (the transfer-learning setting, and a "beyond the paper" option).

    ``normalize=False`` leaves the embeddings unnormalized (the paper's AllClassJoint baseline).

    Like timm's models, the work is split so that cached backbone features can skip the
    backbone: ``forward(x) == forward_head(forward_features(x))``.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, dim: int | None = 64, normalize: bool = True):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.fc = nn.Linear(feature_dim, dim) if dim else nn.Identity()
        self.dim = dim or feature_dim
        self.normalize = normalize

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, (B, feature_dim)."""
        return self.backbone(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings, (B, dim), from backbone features."""
        out = self.fc(features)
        return F.normalize(out, dim=-1) if self.normalize else out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


class ImprintModel(nn.Module):
    """Embedder + classifier + class names + per-class imprinting sums.

    ``config`` records how to rebuild the model (backbone name, sizes, options); it is
    written into checkpoints.
    """

    def __init__(
        self,
        embedder: Embedder,
        classifier: CosineClassifier | LinearClassifier,
        class_names: list[str] | None = None,
        config: dict | None = None,
        unknown_threshold: float | None = None,
    ):
        super().__init__()
        self.embedder = embedder
        self.classifier = classifier
        names = list(class_names or [])
        if len(names) != classifier.num_classes:
            raise ValueError(f"{len(names)} class names for {classifier.num_classes} classifier rows")
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        self.class_names = names
        self._index = {n: i for i, n in enumerate(names)}
        self.sums = ClassSums(embedder.dim, len(names))
        self.config = dict(config or {})
        self.unknown_threshold = unknown_threshold

    # -- classes ---------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def index_of(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise UnknownClassError(f"unknown class {name!r} (the model has {self.num_classes} classes)") from None

    def has_class(self, name: str) -> bool:
        return name in self._index

    def is_imprinted(self, name: str) -> bool:
        return int(self.sums.counts[self.index_of(name)]) > 0

    # -- images ----------------------------------------------------------------
    @property
    def preprocess(self):
        from imprinting.backbones import Preprocess

        return Preprocess.from_dict(self.config["preprocess"])

    def load_images(self, images: Sequence) -> list:
        """Paths or PIL images -> PIL images in the backbone's mode (errors name the file)."""
        from imprinting.data.images import load_image
        from imprinting.data.transforms import image_mode

        mode = image_mode(self.preprocess)
        return [img.convert(mode) if hasattr(img, "convert") else load_image(img, mode) for img in images]

    @torch.no_grad()
    def embed_images(self, images: Sequence, views: int = 1, batch_size: int = 32) -> torch.Tensor:
        """Embeddings of image files or PIL images, (n * views, D).

        ``views=1`` uses the test-time centre crop; ``views=k > 1`` embeds k random
        crop + flip versions of each image (the paper's augmented imprinting uses k=5).
        """
        from imprinting.data.transforms import eval_transform, train_transform
        from imprinting.imprint import embed_images

        pre = self.preprocess
        transform = eval_transform(pre) if views == 1 else train_transform(pre)
        was_training = self.training
        self.eval()
        try:
            return embed_images(self.embed, self.load_images(images), transform, views, batch_size)
        finally:
            self.train(was_training)

    def imprint(self, name: str, images: Sequence, views: int = 1) -> int:
        """Teach class ``name`` from image files or PIL images: a new class is added, an
        existing imprinted class takes the examples. Returns the class index."""
        embeddings = self.embed_images(images, views)
        if self.has_class(name):
            self.add_examples(name, embeddings)
            return self.index_of(name)
        return self.add_class(name, embeddings)

    def predict_images(self, images: Sequence, k: int = 5, unknown_threshold: float | None = None) -> list[Prediction]:
        """Top-k predictions for image files or PIL images."""
        return self.predict_embeddings(self.embed_images(images), k, unknown_threshold)

    # -- forward ---------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of preprocessed images (B, 3, H, W) -> (B, D)."""
        return self.embedder(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embedder(images))

    def logits_from_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.classifier(embeddings)

    @torch.no_grad()
    def predict_embeddings(
        self, embeddings: torch.Tensor, k: int = 5, unknown_threshold: float | None = None
    ) -> list[Prediction]:
        if self.num_classes == 0:
            raise ValueError("the model has no classes yet: imprint one first")
        logits = self.classifier(embeddings)
        probs = logits.softmax(dim=1)
        if isinstance(self.classifier, CosineClassifier):
            cos = self.classifier.cosine(embeddings)
        else:
            cos = embeddings @ F.normalize(self.classifier.linear.weight, dim=1).t()
        k = min(k, self.num_classes)
        top_p, top_i = probs.topk(k, dim=1)
        threshold = self.unknown_threshold if unknown_threshold is None else unknown_threshold
        top_cos = cos.gather(1, top_i).tolist()
        best_cos = cos.max(dim=1).values.tolist()
        out = []
        for p_row, i_row, c_row, best in zip(top_p.tolist(), top_i.tolist(), top_cos, best_cos):
            unknown = threshold is not None and best < threshold
            out.append(Prediction([self.class_names[i] for i in i_row], p_row, c_row, unknown))
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor, k: int = 5, unknown_threshold: float | None = None) -> list[Prediction]:
        """Top-k class names, probabilities and cosine scores for preprocessed images."""
        return self.predict_embeddings(self.embed(images), k, unknown_threshold)

    # -- imprinting ------------------------------------------------------------
    @torch.no_grad()
    def add_class(self, name: str, embeddings: torch.Tensor) -> int:
        """Add a new class whose weight is the normalized mean of ``embeddings`` (n, D).

        Only this class's row is written; every other class keeps its weights bit for bit.
        Returns the new class index.
        """
        if self.has_class(name):
            raise ValueError(f"class {name!r} already exists")
        embeddings = self._check_embeddings(embeddings)
        self.classifier.add_classes(normalized_mean(embeddings).unsqueeze(0))
        self.sums.add_class()
        index = len(self.class_names)
        self.class_names.append(name)
        self._index[name] = index
        self.sums.add(index, embeddings)
        return index

    @torch.no_grad()
    def add_examples(self, name: str, embeddings: torch.Tensor) -> None:
        """Add examples to an imprinted class: its weight becomes the normalized mean of all of them."""
        index = self.index_of(name)
        if not self.is_imprinted(name):
            raise ValueError(f"class {name!r} is a trained base class; only imprinted classes take examples")
        self.sums.add(index, self._check_embeddings(embeddings))
        self._set_weight(index, self.sums.template(index))

    @torch.no_grad()
    def add_class_from_sum(self, name: str, embedding_sum: torch.Tensor, count: int) -> int:
        """Restore an imprinted class from its stored running sum and example count.

        The weight is ``normalize(embedding_sum)``: the same bits as imprinting the examples
        that made the sum. Stores (the service, the lite runtime) keep sums, not models.
        """
        if self.has_class(name):
            raise ValueError(f"class {name!r} already exists")
        if count < 1 or embedding_sum.shape != (self.embedder.dim,):
            raise ValueError(f"need a ({self.embedder.dim},) sum of at least one example for {name!r}")
        self.sums.add_class()
        index = len(self.class_names)
        self.sums._sums[index] = embedding_sum.double()
        self.sums._counts[index] = int(count)
        self.classifier.add_classes(self.sums.template(index).unsqueeze(0))
        self.class_names.append(name)
        self._index[name] = index
        return index

    @torch.no_grad()
    def add_random_class(self, name: str, generator: torch.Generator | None = None) -> int:
        """Add a class with Xavier-uniform random weights (the paper's Rand baseline)."""
        from imprinting.imprint import random_weights

        if self.has_class(name):
            raise ValueError(f"class {name!r} already exists")
        self.classifier.add_classes(random_weights(1, self.embedder.dim, generator))
        self.sums.add_class()
        self.class_names.append(name)
        self._index[name] = len(self.class_names) - 1
        return self._index[name]

    @torch.no_grad()
    def remove_class(self, name: str) -> None:
        """Remove an imprinted class (rebuilds the rows after it; base classes are protected)."""
        index = self.index_of(name)
        if not self.is_imprinted(name):
            raise ValueError(f"class {name!r} is a base class and cannot be removed")
        if not isinstance(self.classifier, CosineClassifier):
            raise ValueError("classes can be removed from cosine classifiers only")
        keep = [i for i in range(self.num_classes) if i != index]
        weight = self.classifier.weight.detach()[keep].clone()
        scale = self.classifier.scale.detach()
        scale = scale[keep].clone() if self.classifier.per_class_scale else scale.clone()
        self.classifier.resize_(len(keep))
        self.classifier.weight.copy_(weight)
        self.classifier.scale.copy_(scale)
        self.sums.remove(index)
        del self.class_names[index]
        self._index = {n: i for i, n in enumerate(self.class_names)}

    def _set_weight(self, index: int, weight: torch.Tensor) -> None:
        if isinstance(self.classifier, CosineClassifier):
            self.classifier.set_class_weight(index, weight)
        else:
            self.classifier.linear.weight[index] = weight

    def _check_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedder.dim or embeddings.shape[0] == 0:
            raise ValueError(
                f"expected embeddings of shape (n >= 1, {self.embedder.dim}), got {tuple(embeddings.shape)}"
            )
        return embeddings.detach().float()


def create_model(
    backbone: str = "efficientnet_lite0",
    dim: int | None = 64,
    pretrained: bool = True,
    classifier: str = "cosine",
    num_classes: int = 0,
    class_names: list[str] | None = None,
    scale: float = 10.0,
    learn_scale: bool = True,
    per_class_scale: bool = False,
    image_size: int | None = None,
    unknown_threshold: float | None = None,
) -> ImprintModel:
    """Build a model from a backbone name (see ``imprinting.backbones``).

    ``dim=None`` normalizes the backbone features directly (no fully connected layer);
    ``classifier`` is ``"cosine"`` (the paper's normalized classifier) or ``"linear"``
    (the unnormalized baseline). ``image_size`` overrides the backbone's crop size.
    """
    from imprinting.backbones import create_backbone

    bb = create_backbone(backbone, pretrained=pretrained)
    # The unnormalized baseline normalizes neither embeddings nor weights.
    embedder = Embedder(bb.module, bb.feature_dim, dim, normalize=classifier == "cosine")
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
    if classifier == "cosine":
        head: CosineClassifier | LinearClassifier = CosineClassifier(
            embedder.dim, len(names), scale, learn_scale, per_class_scale
        )
    elif classifier == "linear":
        head = LinearClassifier(embedder.dim, len(names))
    else:
        raise ValueError(f"classifier must be 'cosine' or 'linear', got {classifier!r}")
    preprocess = bb.preprocess.at_size(image_size)
    config = {
        "backbone": backbone,
        "pretrained": bool(pretrained),
        "weights_id": bb.weights_id,
        "dim": dim,
        "classifier": classifier,
        "scale": scale,
        "learn_scale": learn_scale,
        "per_class_scale": per_class_scale,
        "preprocess": preprocess.to_dict(),
    }
    model = ImprintModel(embedder, head, names, config, unknown_threshold)
    return model.eval()
