"""The feature cache: computed once, reused, recomputed when anything that matters changes."""

import os

import pytest
import torch

from helpers import make_image
from imprinting.backbones import create_backbone
from imprinting.data import ImageSet
from imprinting.data import features as feats
from imprinting.data.features import View, cached_features
from imprinting.data.images import load_image
from imprinting.data.transforms import eval_transform, image_mode, train_transform


@pytest.fixture
def images(tmp_path):
    paths = [make_image(tmp_path / f"{i}.png", (40 * i, 90, 200 - 30 * i), size=(36, 30), seed=i) for i in range(5)]
    return ImageSet("tiny/train", paths, [0, 0, 1, 1, 2], ["a", "b", "c"])


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = feats.compute_features

    def counting(*args, **kwargs):
        calls.append(args[3] if len(args) > 3 else kwargs.get("view"))
        return real(*args, **kwargs)

    monkeypatch.setattr(feats, "compute_features", counting)
    return calls


def test_second_call_reads_the_cache(images, counted, tmp_path):
    bb = create_backbone("conv4", pretrained=False)
    first = cached_features(bb, images, cache=tmp_path / "c", progress=False, num_workers=0)
    second = cached_features(bb, images, cache=tmp_path / "c", progress=False, num_workers=0)
    assert len(counted) == 1 and torch.equal(first, second) and first.shape == (5, 64)
    pre = bb.preprocess
    direct = bb.module.eval()(torch.stack([eval_transform(pre)(load_image(p, image_mode(pre))) for p in images.paths]))
    torch.testing.assert_close(first, direct.detach(), atol=1e-5, rtol=1e-5)


def test_cache_invalidated_by_size_view_weights_and_file_changes(images, counted, tmp_path):
    bb = create_backbone("conv4", pretrained=False)
    c = tmp_path / "c"
    cached_features(bb, images, cache=c, progress=False, num_workers=0)
    cached_features(bb, images, bb.preprocess.at_size(20), cache=c, progress=False, num_workers=0)
    cached_features(bb, images, view=View(3, 0), cache=c, progress=False, num_workers=0)
    assert len(counted) == 3
    make_image(images.paths[2], (0, 0, 0), size=(36, 30))  # the image file changes
    os.utime(images.paths[2], ns=(1, 1))
    cached_features(bb, images, cache=c, progress=False, num_workers=0)
    assert len(counted) == 4
    other = create_backbone("efficientnet_lite0", pretrained=True)
    assert feats.cache_key(other, other.preprocess, images, View()) != feats.cache_key(bb, other.preprocess, images, View())


def test_augmented_views_are_seeded_and_shaped(images, tmp_path):
    bb = create_backbone("conv4", pretrained=False)
    a = cached_features(bb, images, view=View(4, 7), cache=tmp_path / "a", progress=False, num_workers=0)
    b = feats.compute_features(bb, bb.preprocess, images, View(4, 7), batch_size=2, num_workers=0, progress=False)
    c = feats.compute_features(bb, bb.preprocess, images, View(4, 8), num_workers=0, progress=False)
    assert a.shape == (5, 4, 64)
    torch.testing.assert_close(a, b)  # same views whatever the batch size
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[:, 0], a[:, 1])


@pytest.mark.parametrize("workers", [0, 2])
def test_augmented_views_are_train_transform_seeded_per_image(images, workers):
    """The views are torchvision's train_transform drawn after torch.manual_seed(seed * 1_000_003 + i)
    for image i (the cache's definition of its views, unchanged since it was written), bit for bit."""
    bb = create_backbone("conv4", pretrained=False)
    pre, tf = bb.preprocess, train_transform(bb.preprocess)
    want = []
    with torch.random.fork_rng(devices=[]):
        for i, p in enumerate(images.paths):
            torch.manual_seed(7 * 1_000_003 + i)
            img = load_image(p, image_mode(pre))
            want.append(torch.stack([tf(img) for _ in range(3)]))
    want = bb.module.eval()(torch.stack(want).flatten(0, 1)).detach().reshape(5, 3, -1)
    got = feats.compute_features(bb, pre, images, View(3, 7), batch_size=2, num_workers=workers, progress=False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_damaged_cache_entry_is_recomputed(images, counted, tmp_path):
    bb = create_backbone("conv4", pretrained=False)
    c = tmp_path / "c"
    first = cached_features(bb, images, cache=c, progress=False, num_workers=0)
    (entry,) = (c / "features").iterdir()
    entry.write_bytes(entry.read_bytes()[:50])
    again = cached_features(bb, images, cache=c, progress=False, num_workers=0)
    assert len(counted) == 2 and torch.equal(first, again)


def test_different_weights_of_the_same_backbone_do_not_share_a_cache_entry(images, counted, tmp_path):
    a, b = create_backbone("conv4", pretrained=False), create_backbone("conv4", pretrained=False)
    fa = cached_features(a, images, cache=tmp_path / "c", progress=False, num_workers=0)
    fb = cached_features(b, images, cache=tmp_path / "c", progress=False, num_workers=0)
    assert len(counted) == 2 and not torch.equal(fa, fb)
