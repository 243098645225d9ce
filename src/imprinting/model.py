"""The model: an embedder (backbone -> FC -> L2), a classifier, and its class table.

Data flows one way::

    image -> backbone -> Embedder.forward_head (FC -> L2) -> classifier -> logits

Every class's state lives in one ``ClassTable`` (``imprinting.classes``): ``ImprintModel``
mirrors it into its classifier's trainable parameters, which share the table's buffers, and
brings the table up to date (``classes``) after training changed them. Models are built from
a ``ModelSpec`` only (``build_model``): with a backbone, or without one for cached features.

The factories (``build_model``, ``create_model``, ``create_head``) live in ``imprinting.build``,
which imports this module; the old paths ``imprinting.model.build_model`` etc. still resolve,
lazily (``__getattr__`` below), so this module never imports that one while it loads.
"""

from __future__ import annotations

import copy
import importlib
from typing import Sequence

import numpy as np
import torch
from torch import nn

from imprinting.backbones import Backbone
from imprinting.classes import ClassSnapshot, ClassTable
from imprinting.calibration import in_force
from imprinting.conformal import set_q
from imprinting.data.images import ImageError, load_image
from imprinting.engines import frozen_engine, in_training, record
from imprinting.errors import ClassError
from imprinting.imprint import random_weights
from imprinting.layers import CosineClassifier, Embedder, Head, LinearClassifier  # noqa: F401  (this API)
from imprinting.layers import to_numpy as _numpy
from imprinting.prediction import Prediction, UnknownClassError, top_k  # noqa: F401  (this API)
from imprinting.spec import ModelSpec, fingerprint, store_fingerprint


class ImprintModel(nn.Module):
    """Embedder + classifier + the class table (names, vectors, sums, counts, scales)."""

    def __init__(self, embedder: Embedder, classifier: CosineClassifier | LinearClassifier,
                 class_names: Sequence[str] | None = None, spec: ModelSpec | None = None,
                 unknown_threshold: float | None = None):
        super().__init__()
        self.embedder = embedder
        self.classifier = classifier
        names = list(class_names or [])
        if len(names) != classifier.num_classes:
            raise ClassError(f"{len(names)} class names for {classifier.num_classes} classifier rows")
        dim = embedder.fc.out_features if isinstance(embedder.fc, nn.Linear) else None
        scale = classifier.scale_rows
        self.spec = spec or ModelSpec(backbone=None, pretrained=False, dim=dim, feature_dim=embedder.feature_dim,
                                      classifier="cosine" if scale is not None else "linear")
        self._synced: tuple | None = None
        self._table = ClassTable.from_arrays(
            names, classifier.rows.detach().numpy(), np.zeros((len(names), embedder.dim)), np.zeros(len(names)),
            scale.detach().numpy() if scale is not None else [self.spec.scale],
            bool(getattr(classifier, "per_class_scale", False)), self.spec.scale)
        self._push()
        self.unknown_threshold, self.conformal = unknown_threshold, None  # conformal: calibration's scores

    # -- what calibration gives: it follows the classes (imprinting.calibration_set) -------
    @property
    def unknown_threshold(self) -> float | None:
        """The best cosine below which a prediction is flagged unknown (None: never). Set by
        hand it stays; set by calibration (``threshold_follows``) it is recomputed from the
        kept examples whenever the classes change."""
        return in_force(self.classes, self._threshold, self._conformal, self.threshold_follows)[0]

    @unknown_threshold.setter
    def unknown_threshold(self, value: float | None) -> None:
        self._threshold, self.threshold_follows = value, False

    @property
    def conformal(self):
        """The calibration scores of the classes of now (``imprinting.conformal``), or None."""
        return in_force(self.classes, self._threshold, self._conformal, False)[1]

    @conformal.setter
    def conformal(self, value) -> None:
        self._conformal = value

    # -- the class table and its mirror ---------------------------------------------------
    def _key(self) -> tuple:
        rows, scale = self.classifier.rows, self.classifier.scale_rows
        key = (rows.data_ptr(), tuple(rows.shape), rows._version, rows.device.type)
        return key + ((scale.data_ptr(), tuple(scale.shape), scale._version) if scale is not None else ())

    def _shares_table(self) -> bool:
        rows, scale = self.classifier.rows, self.classifier.scale_rows
        w, s = self._table.weight_buffer(), self._table.scale_buffer()
        same = rows.device.type == "cpu" and tuple(rows.shape) == w.shape and (len(w) == 0 or rows.data_ptr() == w.ctypes.data)
        return same and (scale is None or (tuple(scale.shape) == s.shape and scale.data_ptr() == s.ctypes.data))

    def _pull(self) -> None:
        """Bring the table up to date with the classifier's parameters (after training, a
        state-dict load, a copy or a move to another device)."""
        if self._key() == self._synced:
            return
        if self._shares_table():
            self._table.refresh()  # trained in place: only the templates are stale
        else:
            scale = self.classifier.scale_rows
            self._table.set_vectors(self.classifier.rows.detach().cpu().numpy(),
                                    None if scale is None else scale.detach().cpu().numpy())
        self._push()

    def _push(self) -> None:
        """Point the classifier's parameters at the table's rows (a copy on a GPU)."""
        rows = self.classifier.rows
        w = torch.from_numpy(self._table.weight_buffer())
        s = torch.from_numpy(self._table.scale_buffer()) if self.classifier.scale_rows is not None else None
        if rows.device.type != "cpu":
            w, s = w.to(rows.device), (s.to(rows.device) if s is not None else None)
        self.classifier.bind(w, s)
        self._synced = self._key()

    @property
    def classes(self) -> ClassTable:
        """The class table, up to date. Change classes through the model's methods."""
        self._pull()
        return self._table

    def set_classes(self, table: ClassTable, copy: bool = True) -> None:
        """Replace every class by those of ``table`` (a copy of it unless ``copy=False``),
        e.g. a classes file's."""
        if table.dim != self.embedder.dim:
            raise ClassError(f"{table.dim}-d classes for a model with {self.embedder.dim}-d embeddings")
        want = bool(getattr(self.classifier, "per_class_scale", False))
        if table.per_class_scale != want:
            table, copy = table.with_scale_mode(want), False
        self._table = table.copy() if copy else table
        self._push()

    def _change(self, operation, *args):
        self._pull()  # the table up to date, changed by ``operation``, then mirrored again
        try:
            return operation(*args)
        finally:
            self._push()

    @property
    def class_names(self) -> list[str]:
        """The class names in order (a copy; the table is ``classes``)."""
        return list(self.classes.names)

    num_classes = property(lambda self: len(self._table))

    def index_of(self, name: str) -> int:
        return self._table.index_of(name)

    def has_class(self, name: str) -> bool:
        return name in self._table

    def is_imprinted(self, name: str) -> bool:
        return self._table.is_imprinted(name)

    def add_class(self, name: str, embeddings: torch.Tensor) -> int:
        """A new class whose weight is the normalized mean of ``embeddings`` (n, D). Only
        its row is written; every other class keeps its weights bit for bit."""
        return self._change(self._table.add, name, _numpy(embeddings))

    def add_examples(self, name: str, embeddings: torch.Tensor) -> int:
        """More examples for an imprinted class: its weight is the normalized mean of all."""
        return self._change(self._table.extend, name, _numpy(embeddings))

    def add_class_from_sum(self, name: str, embedding_sum, count: int) -> int:
        """Restore an imprinted class from its stored float64 sum and example count."""
        return self._change(self._table.add_from_sum, name, _numpy(embedding_sum, np.float64), count)

    def add_random_class(self, name: str, generator: torch.Generator | None = None) -> int:
        """A class with Xavier-uniform random weights (the paper's Rand baseline)."""
        return self._change(self._table.add_vector, name, random_weights(1, self.embedder.dim, generator)[0].numpy())

    def remove_class(self, name: str) -> None:
        """Remove an imprinted class (base classes are protected)."""
        if not self.classifier.removable:
            raise ClassError("classes can be removed from cosine classifiers only")
        self._change(self._table.remove, name)

    def snapshot_class(self, name: str) -> ClassSnapshot:
        """A copy of one class's whole state, for ``restore_class``."""
        return self.classes.snapshot(name)

    def restore_class(self, snapshot: ClassSnapshot) -> None:
        """Put a class back exactly as ``snapshot`` saw it, at its place in the order."""
        self._change(self._table.restore, snapshot)

    # -- images ----------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """The spec as the JSON of checkpoints (read-only; use ``spec``)."""
        return self.spec.to_config()

    @property
    def preprocess(self):
        if self.spec.preprocess is None:
            raise ClassError("this model has no backbone: it takes backbone features, not images")
        return self.spec.preprocess

    @property
    def backbone(self):
        """The backbone as ``imprinting.backbones.Backbone`` (its module is this model's)."""
        return Backbone(self.spec.backbone, self.embedder.backbone, self.embedder.feature_dim, self.preprocess,
                        self.spec.pretrained, self.spec.weights_id)

    def load_images(self, images: Sequence) -> list:
        """Paths or PIL images -> PIL images in the backbone's mode (errors name the file)."""
        # slow import: torchvision (~1 s), only when images are read (loading a model stays fast)
        from imprinting.data.transforms import image_mode

        mode = image_mode(self.preprocess)
        return [img.convert(mode) if hasattr(img, "convert") else load_image(img, mode) for img in images]

    # The engine slot (of the machine, not the spec): "auto", "torch", "onnxruntime", "openvino";
    # None: the process default (imprinting.engines.set_default, $IMPRINTING_ENGINE, else "auto").
    engine: str | None = None
    precision: str | None = None  # "auto" (float32), "float32" or "bfloat16" (asked for only)

    def frozen_engine(self, training: bool | None = None):
        """The engine (``imprinting.engines.Engine``) that runs this model's frozen backbone;
        PyTorch while the model is in training mode."""
        training = self.training if training is None else training
        return frozen_engine(self.embedder.backbone, self.preprocess, self.engine, self.precision, training)

    @torch.no_grad()
    def embed_images(self, images: Sequence, views: int = 1, batch_size: int = 32, progress=None) -> torch.Tensor:
        """Embeddings of image files or PIL images, (n * views, D); ``views=k > 1`` embeds k
        random crop + flip versions of each (the paper's augmented imprinting uses 5).
        ``progress(k)`` is called after each batch of k images.

        The backbone runs on the model's engine (``frozen_engine``), decoding in parallel
        (``imprinting.engines.pipeline``); FC and normalization run in PyTorch."""
        # slow import: torchvision (~1 s), only when images are embedded (loading a model stays fast)
        from imprinting.data.transforms import train_transform
        from imprinting.engines import pipeline

        if not len(images):
            raise ImageError("no images to embed")
        pre = self.preprocess
        if views == 1:
            return self._embed_with(lambda engine: pipeline.center_features(engine, images, pre, batch_size,
                                                                             progress=progress))
        return self._embed_with(lambda engine: pipeline.view_features(engine, images, train_transform(pre), views, pre,
                                                                       batch_size, progress=progress))

    @torch.no_grad()
    def embed_pixels(self, pixels: np.ndarray, engine=None) -> torch.Tensor:
        """Embeddings (n, D) of images already decoded, centre-cropped and normalized: an
        (n, C, H, W) float32 array filled by ``engines.pipeline.CenterCrops``, the pixels
        ``embed_images`` makes of them (the service decodes in threads of its own). ``engine``:
        ``frozen_engine()`` taken once by a caller that changes neither the backbone's weights
        nor the eval mode after (the service's worker), which are then not checked again."""
        from imprinting.engines.pipeline import for_batch

        return self._embed_with(lambda engine: for_batch(engine, len(pixels)).run(pixels), engine)

    def _embed_with(self, features, engine=None) -> torch.Tensor:
        """``features(engine)``: backbone features on the frozen backbone's engine, in eval
        mode; then FC and normalization in PyTorch (``embed_images``, ``embed_pixels``).
        ``engine``: the caller's, taken once (``embed_pixels``): no mode switched or checked."""
        was_training = self.training
        # eval() and train() walk every module (0.45 ms each on EfficientNet-Lite0): if one trains
        switch = engine is None and in_training(self)
        if switch:
            self.eval()
        try:
            engine = self.frozen_engine(training=was_training) if engine is None else engine
            feats = features(engine)
            record(engine)
            return self.embedder.forward_head(feats.to(self.classifier.rows.device))
        finally:
            if switch:
                self.train(was_training)

    def imprint(self, name: str, images: Sequence, views: int = 1) -> int:
        """Teach class ``name`` from image files or PIL images: a new class is added, an
        imprinted class takes the examples. Returns the class index."""
        return self.imprint_embeddings(name, self.embed_images(images, views))

    def imprint_embeddings(self, name: str, embeddings: torch.Tensor) -> int:
        """``imprint`` from embeddings (n, D): ``add_class`` or ``add_examples``."""
        return self._change(self._table.imprint, name, _numpy(embeddings))

    def predict_images(self, images: Sequence, k: int = 5, unknown_threshold: float | None = None,
                       coverage: float | None = None) -> list[Prediction]:
        """Top-k predictions for image files or PIL images (``predict_embeddings``)."""
        return self.predict_embeddings(self.embed_images(images), k, unknown_threshold, coverage)

    # -- forward ---------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of preprocessed images (B, C, H, W) -> (B, D)."""
        return self.embedder(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embedder(images))

    def head(self) -> Head:
        """FC + classifier as one module over backbone features (what trains on cached ones)."""
        return Head(self.embedder, self.classifier)

    @torch.no_grad()
    def predict_embeddings(self, embeddings: torch.Tensor, k: int = 5, unknown_threshold: float | None = None,
                           coverage: float | None = None) -> list[Prediction]:
        """Top-k names, probabilities and cosines, from the table's normalized templates; with
        ``coverage``, each one's prediction set (``imprinting.conformal``: needs calibration)."""
        table = self.classes
        if len(table) == 0:
            raise ClassError("the model has no classes yet: imprint one first")
        e = embeddings.detach().float().cpu()
        cos = table.cosines(e.numpy())
        logits = table.logits(cos, e.numpy()) if table.head is not None else self.classifier.logits(cos, e)
        threshold = self.unknown_threshold if unknown_threshold is None else unknown_threshold
        return top_k(cos, logits, table.name_at, k, threshold, set_q(self.conformal, coverage))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, k: int = 5, unknown_threshold: float | None = None,
                coverage: float | None = None) -> list[Prediction]:
        """Top-k class names, probabilities and cosine scores for preprocessed images."""
        return self.predict_embeddings(self.embed(images), k, unknown_threshold, coverage)

    # -- with and without the backbone -------------------------------------------------------
    def without_backbone(self) -> "ImprintModel":
        """A copy of FC + classifier + classes that takes cached backbone features."""
        backbone, self.embedder.backbone = self.embedder.backbone, nn.Identity()
        try:
            head = copy.deepcopy(self)
        finally:
            self.embedder.backbone = backbone
        head.spec = self.spec.headless(self.embedder.feature_dim)
        return head.eval()

    def with_backbone(self, backbone, preprocess=None) -> "ImprintModel":
        """A copy of this model on ``backbone`` (an ``imprinting.backbones.Backbone``, copied)."""
        if backbone.feature_dim != self.embedder.feature_dim:
            raise ClassError(f"{backbone.name} gives {backbone.feature_dim}-d features; this model takes "
                             f"{self.embedder.feature_dim}-d ones")
        old, self.embedder.backbone = self.embedder.backbone, nn.Identity()
        try:
            full = copy.deepcopy(self)
        finally:
            self.embedder.backbone = old
        full.embedder.backbone = copy.deepcopy(backbone.module)
        full.spec = self.spec.on_backbone(backbone.name, backbone.feature_dim, preprocess or backbone.preprocess,
                                          backbone.pretrained, backbone.weights_id)
        return full.eval()

    def with_classes(self, table: ClassTable) -> "ImprintModel":
        """This model's embedder (shared, not copied) under a cosine classifier of ``table``'s
        classes (e.g. the novel rows alone: the final layer of transfer learning)."""
        clf = self.classifier
        spec = self.spec
        head = CosineClassifier(self.embedder.dim, 0, float(table.scale.mean()) if len(table.scale) else spec.scale,
                                spec.learn_scale, table.per_class_scale)
        out = ImprintModel(self.embedder, head, (), spec, self.unknown_threshold)
        out.set_classes(table)
        out.classifier.scale.requires_grad_(clf.scale_rows.requires_grad if clf.scale_rows is not None else True)
        return out

    # -- descriptions and fingerprints --------------------------------------------------------
    def embedder_id(self) -> str:
        """SHA-256 of the embedder's weights: classes made with one embedder mean nothing to another."""
        return fingerprint(self.embedder)

    def store_fingerprint(self) -> str:
        """What a class store of the service is bound to: embedder weights and preprocessing."""
        return store_fingerprint(self.embedder_id(), self.spec.preprocess)

    def describe(self) -> dict:
        """What the model is and knows (``imprint info``, the service's ``/health``)."""
        table = self.classes
        spec = self.spec
        return {
            "backbone": spec.backbone,
            "pretrained": spec.pretrained,
            "embedding_dim": self.embedder.dim,
            "classifier": spec.classifier,
            "scale": round(float(table.scale.mean()), 4) if spec.classifier == "cosine" else None,
            "image_size": spec.preprocess.image_size if spec.preprocess else None,
            "unknown_threshold": self.unknown_threshold,
            "num_classes": len(table),
            "head": table.head_info(),
            "classes": [{"name": n, "kind": "imprinted" if c else "base", "examples": int(c)}
                        for n, c in zip(table.names, table.counts.tolist())],
        }


_BUILDERS = ("build_model", "create_head", "create_model")  # moved to imprinting.build


def __getattr__(name: str):
    """``imprinting.model.build_model`` and the other factories, from ``imprinting.build``
    (PEP 562; by name, like the package's own lazy names, so the two modules import one way)."""
    if name not in _BUILDERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("imprinting.build"), name)
