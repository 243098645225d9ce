"""``ModelSpec``: how to rebuild a model, and the fingerprint of its weights.

A spec is written into every checkpoint (as the ``config`` JSON of earlier versions, whose
files still load) and every export. It is the only description models are built from
(``imprinting.model.build_model``): with a backbone, or without one (``backbone=None``) for
cached backbone features; ``headless`` and ``on_backbone`` go from one to the other.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace

import torch

from imprinting.backbones import Preprocess
from imprinting.errors import UserError

CLASSIFIERS = ("cosine", "linear")


class SpecError(UserError):
    """A model description that cannot be built: an unknown classifier, a bad size or scale."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's modules (the weights come from elsewhere).

    ``backbone``: a name of ``imprinting.backbones`` (``None``: no backbone; the model takes
    backbone features of size ``feature_dim``). ``weights_id`` names the pretrained weights
    (``"random"`` otherwise). ``dim``: the FC layer's output size (``None``: no FC layer).
    ``classifier``: ``"cosine"`` (the paper's normalized classifier) or ``"linear"`` (the
    unnormalized baseline). ``scale``, ``learn_scale``, ``per_class_scale``: the cosine
    classifier's s. ``preprocess``: the images the backbone expects.
    """

    backbone: str | None = "efficientnet_lite0"
    pretrained: bool = True
    weights_id: str = "random"
    dim: int | None = 64
    classifier: str = "cosine"
    scale: float = 10.0
    learn_scale: bool = True
    per_class_scale: bool = False
    preprocess: Preprocess | None = field(default=None)
    feature_dim: int | None = None
    power: float | None = None

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise SpecError(f"classifier must be 'cosine' or 'linear', got {self.classifier!r}")
        if self.dim is not None and (not isinstance(self.dim, int) or self.dim < 1):
            raise SpecError(f"the embedding size must be a positive integer (or none), got {self.dim!r}")
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise SpecError(f"the scale s must be a positive finite number, got {self.scale!r}")
        if self.power is not None and not (isinstance(self.power, (int, float)) and 0 < self.power <= 1):
            raise SpecError(f"the power transform's exponent must be in (0, 1], got {self.power!r}")
        if self.power is not None and self.classifier != "cosine":
            raise SpecError("the power transform needs normalized embeddings (the cosine classifier)")
        if self.backbone is None and not self.feature_dim:
            raise SpecError("a model without a backbone needs its feature size (feature_dim)")

    @property
    def normalize(self) -> bool:
        """The unnormalized baseline normalizes neither embeddings nor weights."""
        return self.classifier == "cosine"

    def headless(self, feature_dim: int | None = None) -> "ModelSpec":
        """The same model without its backbone, for cached features."""
        return replace(self, backbone=None, feature_dim=feature_dim or self.feature_dim)

    def on_backbone(self, backbone: str, feature_dim: int, preprocess: Preprocess, pretrained: bool,
                    weights_id: str) -> "ModelSpec":
        return replace(self, backbone=backbone, feature_dim=feature_dim, preprocess=preprocess,
                       pretrained=pretrained, weights_id=weights_id)

    def to_config(self) -> dict:
        """The JSON-able form written into checkpoints and exports (the earlier ``config``)."""
        return {
            "backbone": self.backbone,
            "pretrained": self.pretrained,
            "weights_id": self.weights_id,
            "dim": self.dim,
            "classifier": self.classifier,
            "scale": self.scale,
            "learn_scale": self.learn_scale,
            "per_class_scale": self.per_class_scale,
            "preprocess": self.preprocess.to_dict() if self.preprocess else None,
            "feature_dim": self.feature_dim,
            **({"power": self.power} if self.power is not None else {}),
        }

    @classmethod
    def from_config(cls, config: dict) -> "ModelSpec":
        """Read a checkpoint's ``config``; a missing or wrong field is a ``SpecError`` naming it."""
        if not isinstance(config, dict):
            raise SpecError(f"the model configuration is not an object: {config!r}")
        try:
            backbone = config["backbone"]
            pre = config.get("preprocess")
            if backbone is not None and pre is None:
                raise KeyError("preprocess")
            return cls(
                backbone=None if backbone in (None, "cached-features") else str(backbone),
                pretrained=bool(config.get("pretrained", False)),
                weights_id=str(config.get("weights_id", "random")),
                dim=None if config.get("dim") is None else int(config["dim"]),
                classifier=str(config.get("classifier", "cosine")),
                scale=float(config.get("scale", 10.0)),
                learn_scale=bool(config.get("learn_scale", True)),
                per_class_scale=bool(config.get("per_class_scale", False)),
                preprocess=Preprocess.from_dict(pre) if pre is not None else None,
                feature_dim=None if config.get("feature_dim") is None else int(config["feature_dim"]),
                power=None if config.get("power") is None else float(config["power"]),
            )
        except KeyError as exc:
            raise SpecError(f"the model configuration has no {exc.args[0]!r} field") from None
        except (TypeError, ValueError) as exc:
            raise SpecError(f"the model configuration is damaged ({exc})") from None


def fingerprint(module) -> str:
    """SHA-256 of a module's weights (every parameter and buffer, with names, dtypes and
    shapes): the one fingerprint of weights, used by the feature cache (backbones without
    named weights), the export's ``embedder_id`` and the service's store."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}:{t.dtype}:{tuple(tensor.shape)};".encode())
        h.update(t.view(_uint8()).numpy().tobytes())
    return h.hexdigest()


def _uint8():
    return torch.uint8


def store_fingerprint(embedder_id: str, preprocess: Preprocess | None) -> str:
    """What a class store is bound to: the embedder's weights and the preprocessing
    (embeddings are only comparable between models that agree on both)."""
    pre = json.dumps(preprocess.to_dict() if preprocess else None, sort_keys=True)
    return hashlib.sha256((embedder_id + pre).encode()).hexdigest()
