"""Building models: the factories that turn a ``ModelSpec`` (or a backbone name, or a
feature size) into an ``ImprintModel`` (``imprinting.model``).

``build_model`` is the one construction path (checkpoints use it too); ``create_model`` and
``create_head`` are its conveniences for a backbone by name and for cached backbone
features. They are apart from ``imprinting.model`` because making a model (choosing and
loading a backbone, sizing the layers from a spec) is a concept of its own, next to what a
model is and does; this module imports ``imprinting.model``, never the other way round at
load time (``imprinting.model`` still answers the old names lazily).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from imprinting.backbones import create_backbone
from imprinting.layers import CosineClassifier, Embedder, LinearClassifier
from imprinting.model import ImprintModel
from imprinting.spec import ModelSpec


def build_model(spec: ModelSpec, class_names: Sequence[str] = (), pretrained: bool | None = None,
                unknown_threshold: float | None = None, image_size: int | None = None,
                engine: str | None = None, precision: str | None = None) -> ImprintModel:
    """The one construction path: the modules ``spec`` describes, with ``class_names`` as
    random (Xavier-uniform) rows. ``pretrained=False`` skips loading the backbone's weights
    (a checkpoint brings its own). A spec without ``preprocess`` takes the backbone's, at
    ``image_size`` when given. ``engine``, ``precision``: the engine slot (``ImprintModel.engine``)."""
    if spec.backbone is None:
        backbone, feature_dim = nn.Identity(), spec.feature_dim
    else:
        bb = create_backbone(spec.backbone, pretrained=spec.pretrained if pretrained is None else pretrained)
        backbone, feature_dim = bb.module, bb.feature_dim
        weights_id = spec.weights_id if pretrained is False else bb.weights_id
        spec = spec.on_backbone(bb.name, bb.feature_dim, spec.preprocess or bb.preprocess.at_size(image_size),
                                spec.pretrained, weights_id)
    embedder = Embedder(backbone, feature_dim, spec.dim, normalize=spec.normalize, power=spec.power)
    names = list(class_names)
    if spec.classifier == "cosine":
        head = CosineClassifier(embedder.dim, len(names), spec.scale, spec.learn_scale, spec.per_class_scale)
    else:
        head = LinearClassifier(embedder.dim, len(names))
    model = ImprintModel(embedder, head, names, spec, unknown_threshold).eval()
    model.engine, model.precision = engine, precision
    return model


def create_model(backbone: str = "efficientnet_lite0", dim: int | None = 64, pretrained: bool = True,
                 classifier: str = "cosine", num_classes: int = 0, class_names: list[str] | None = None,
                 scale: float = 10.0, learn_scale: bool = True, per_class_scale: bool = False,
                 image_size: int | None = None, unknown_threshold: float | None = None,
                 engine: str | None = None, precision: str | None = None, power: float | None = None) -> ImprintModel:
    """Build a model from a backbone name (see ``imprinting.backbones``).

    ``dim=None`` normalizes the backbone features directly (no fully connected layer);
    ``classifier`` is ``"cosine"`` (the paper's normalized classifier) or ``"linear"``
    (the unnormalized baseline). ``image_size`` overrides the backbone's crop size.
    ``engine`` runs the frozen backbone when embedding images: ``"auto"`` (the fastest exact
    one installed), ``"torch"``, ``"onnxruntime"`` or ``"openvino"`` (``None``: the process
    default, see ``imprinting.engines``); ``precision``: ``"auto"``/``"float32"`` or ``"bfloat16"``.
    ``power``: the embedder's power transform (``ModelSpec.power``; the closed-form heads use 0.5).
    """
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
    spec = ModelSpec(backbone, bool(pretrained), "random", dim, classifier, scale, learn_scale, per_class_scale,
                     power=power)
    return build_model(spec, names, unknown_threshold=unknown_threshold, image_size=image_size,
                       engine=engine, precision=precision)


def create_head(feature_dim: int, dim: int | None, class_names: Sequence[str], scale: float = 10.0,
                per_class_scale: bool = False, learn_scale: bool = True) -> ImprintModel:
    """FC + cosine classifier over cached backbone features (no backbone)."""
    spec = ModelSpec(backbone=None, pretrained=False, dim=dim, scale=scale, learn_scale=learn_scale,
                     per_class_scale=per_class_scale, feature_dim=feature_dim)
    return build_model(spec, class_names)
