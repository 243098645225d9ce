"""Backbones: the offline ImageNet EfficientNet-Lite0 recognises birds; clear errors otherwise."""

import pytest
import torch

from helpers import cub_images
from imprinting.backbones import (
    BackboneError,
    BackboneWeightsMissing,
    create_backbone,
    efficientnet_lite_imagenet,
)
from imprinting.data.images import load_image
from imprinting.data.transforms import eval_transform

# ImageNet-1k bird classes: 7-24 (cock ... great grey owl), 80-100 (black grouse ... black
# swan), 127-146 (white stork ... albatross).
IMAGENET_BIRDS = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))


def test_efficientnet_lite0_puts_an_imagenet_bird_in_the_top5_for_cub_birds(shared_data):
    model = efficientnet_lite_imagenet(0).eval()
    pre = create_backbone("efficientnet_lite0", pretrained=False).preprocess
    tf = eval_transform(pre)
    files = cub_images(shared_data, per_class=1, classes=10)
    x = torch.stack([tf(load_image(f)) for f in files])
    with torch.no_grad():
        top5 = model(x).topk(5, dim=1).indices.tolist()
    hits = [bool(IMAGENET_BIRDS & set(row)) for row in top5]
    assert all(hits), f"no bird class in the top 5 for {[f.name for f, h in zip(files, hits) if not h]}"


def test_efficientnet_lite0_features_and_preprocessing():
    bb = create_backbone("efficientnet_lite0")
    assert bb.pretrained and bb.feature_dim == 1280
    assert bb.preprocess.mean == (0.5, 0.5, 0.5) and bb.preprocess.std == (0.5, 0.5, 0.5)  # [-1, 1]
    with torch.no_grad():
        assert bb.module.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 1280)
    # the pretrained weights were really loaded: they differ from a fresh random init
    random = create_backbone("efficientnet_lite0", pretrained=False)
    assert not torch.equal(bb.module.conv_stem.weight, random.module.conv_stem.weight)


def test_missing_torchvision_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for arch in ("googlenet", "resnet18"):
        with pytest.raises(BackboneWeightsMissing, match=rf"{arch}.*weights.*{tmp_path}"):
            create_backbone(arch, pretrained=True)


def test_random_init_torchvision_and_timm_backbones_give_pooled_features():
    for name, dim in (("googlenet", 1024), ("resnet18", 512), ("timm:resnet10t", 512)):
        bb = create_backbone(name, pretrained=False)
        with torch.no_grad():
            assert bb.module.eval()(torch.randn(1, 3, 64, 64)).shape == (1, dim), name
        assert bb.feature_dim == dim


def test_conv4_for_omniglot_size_images():
    bb = create_backbone("conv4", pretrained=False)
    assert bb.preprocess.in_chans == 1 and bb.preprocess.image_size == 28
    assert bb.module(torch.randn(3, 1, 28, 28)).shape == (3, 64)
    with pytest.raises(BackboneError, match="no pretrained weights"):
        create_backbone("conv4", pretrained=True)


def test_unknown_backbone_names_are_clear_errors():
    with pytest.raises(BackboneError, match="unknown backbone 'alexnet9'.*efficientnet_lite0"):
        create_backbone("alexnet9")
    with pytest.raises(BackboneError, match="timm has no model named 'nope'"):
        create_backbone("timm:nope", pretrained=False)
