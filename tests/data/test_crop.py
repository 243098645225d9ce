"""Resizing only the centre crop (``imprinting.data.crop``) against torchvision's own
``Resize`` + ``CenterCrop``, computed here on the whole image: the same pixels, for every
shape, filter, mode and size, including the pass order Pillow picks and the boxes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torchvision.transforms as T
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imprinting.data import crop

FILTERS = {Image.Resampling.BILINEAR: T.InterpolationMode.BILINEAR, Image.Resampling.BICUBIC: T.InterpolationMode.BICUBIC}
# (resize, crop): powers of two resize (boxes along the short side), others (no box), no crop margin
SIZES = [(256, 224), (64, 56), (32, 28), (128, 112), (110, 96), (183, 160), (28, 28), (300, 299)]


def torchvision_crop(img: Image.Image, resize_to: int, size: int, resample) -> np.ndarray:
    return np.asarray(T.CenterCrop(size)(T.Resize(resize_to, interpolation=FILTERS[resample])(img)))


def random_image(rng, w: int, h: int, mode: str) -> Image.Image:
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if mode == "L" else pixels)


@settings(max_examples=300, deadline=None)
@given(w=st.integers(8, 420), h=st.integers(8, 420), sizes=st.sampled_from(SIZES),
       resample=st.sampled_from(list(FILTERS)), mode=st.sampled_from(["RGB", "L"]), seed=st.integers(0, 2**16))
def test_the_crop_is_torchvisions_pixel_for_pixel(w, h, sizes, resample, mode, seed):
    resize_to, size = sizes
    img = random_image(np.random.default_rng(seed), w, h, mode)
    tw, th = crop.resized_size(w, h, resize_to)
    got = crop.center_crop(img, resize_to, size, resample)
    if size > min(tw, th):  # torchvision pads: left to it
        assert got is None
        return
    assert got is not None and got.mode == mode
    np.testing.assert_array_equal(np.asarray(got), torchvision_crop(img, resize_to, size, resample))


def _resized_pixels(steps) -> int:
    return sum(step[1][0] * step[1][1] for step in steps if step[0] == "resize")


@pytest.mark.parametrize("w,h", [(299, 224), (224, 299), (700, 333), (333, 700)])
def test_only_about_the_crop_is_resized(w, h):
    """A Flowers-102-like photo (224 px short side) and larger ones, both orientations: the
    passes make fewer pixels than the whole resize's two passes do."""
    tw, th = crop.resized_size(w, h, 256)
    steps = crop.plan(w, h, 256, 224, Image.Resampling.BICUBIC)
    vertical_first = (h - th) > 0 and (h - th) > (w - tw) * 2
    whole = (w * th if vertical_first else tw * h) + tw * th
    assert _resized_pixels(steps) < 0.9 * whole
    if h <= w:  # the short side is resized last, in a box: that pass makes just the crop
        assert steps[-1][0] == "resize" and steps[-1][1] == (224, 224)


def test_a_pillow_that_resizes_otherwise_turns_the_fast_path_off(monkeypatch, caplog):
    """The check ``exact`` runs once a process: when the passes' pixels differ from Pillow's
    own resize (here: a plan that rounds the crop one pixel off), every crop is torchvision's."""
    real = crop.plan.__wrapped__

    def off_by_one(w, h, resize_to, size, resample):
        steps = real(w, h, resize_to, size, resample)
        return steps and tuple(("crop", (1, 0, size + 1, size)) if s[0] == "crop" and s[1][2] - s[1][0] == size else s
                               for s in steps)

    monkeypatch.setattr(crop, "plan", off_by_one)
    crop.exact.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="imprinting.data.crop"):
            assert not crop.exact(256, 224, Image.Resampling.BICUBIC)
        assert "differs from Pillow" in caplog.text
        img = random_image(np.random.default_rng(0), 299, 224, "RGB")
        assert crop.center_crop(img, 256, 224, Image.Resampling.BICUBIC) is None
    finally:
        crop.exact.cache_clear()
    assert crop.exact(256, 224, Image.Resampling.BICUBIC) is False  # the patch is still in place
    monkeypatch.undo()
    crop.exact.cache_clear()
    assert crop.exact(256, 224, Image.Resampling.BICUBIC)


@pytest.mark.real_data
def test_real_photos_at_the_default_size(shared_data):
    files = sorted((shared_data / "flowers102" / "flowers-102" / "jpg").glob("*.jpg"))[::300]
    files += sorted((shared_data / "cub" / "CUB_200_2011" / "images").glob("*/*.jpg"))[::300]
    if len(files) < 10:
        pytest.skip("Flowers-102 and CUB JPEGs not found in ../shared/data")
    for path in files:
        with Image.open(path) as opened:
            img = opened.convert("RGB")
        for resample in FILTERS:
            got = crop.center_crop(img, 256, 224, resample)
            np.testing.assert_array_equal(np.asarray(got), torchvision_crop(img, 256, 224, resample), err_msg=str(path))


def test_shrink_resizes_only_what_the_resize_makes_smaller():
    """The server keeps what ``shrink`` gives until the crop: torchvision's resize of an image
    it makes smaller, the image itself (not a copy) where it would enlarge it; either way the
    crop taken after is the eval transform's."""
    from imprinting.backbones import create_backbone
    from imprinting.data.transforms import eval_crop

    pre = create_backbone("efficientnet_lite0", pretrained=False).preprocess  # bicubic, 256 -> 224
    ec, rng = eval_crop(pre), np.random.default_rng(5)
    small, big = random_image(rng, 300, 230, "RGB"), random_image(rng, 700, 520, "RGB")
    assert ec.shrink(small) is small
    shrunk = ec.shrink(big)
    assert shrunk.size == (344, 256)  # 700 * 256 / 520 = 344.6: torchvision's int()
    np.testing.assert_array_equal(np.asarray(shrunk), np.asarray(T.Resize(256, interpolation=FILTERS[Image.Resampling.BICUBIC])(big)))
    for img in (small, big):
        np.testing.assert_array_equal(np.asarray(ec(ec.shrink(img))), torchvision_crop(img, 256, 224, Image.Resampling.BICUBIC))
