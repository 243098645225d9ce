"""The lite preprocessing (Pillow + numpy) against torchvision's eval transform."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms.functional import _compute_resized_output_size

from imprinting.backbones import Preprocess
from imprinting.data.transforms import eval_transform, image_mode
from imprinting.lite.preprocess import center_crop, resized_size, to_array, to_batch

RECIPES = {
    "effnet-bicubic": Preprocess(96, 110, (0.5,) * 3, (0.5,) * 3, 3, "bicubic"),
    "imagenet-bilinear": Preprocess(64, 73, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 3, "bilinear"),
    "nearest-odd": Preprocess(27, 31, (0.5,) * 3, (0.25,) * 3, 3, "nearest"),
    "gray-conv4": Preprocess(28, 28, (0.5,), (0.5,), 1, "bilinear"),
    "crop-larger-than-resize": Preprocess(40, 30, (0.5,) * 3, (0.5,) * 3, 3, "bilinear"),
}


def _reference(img: Image.Image, pre: Preprocess) -> np.ndarray:
    return eval_transform(pre)(img.convert(image_mode(pre))).numpy()


@pytest.mark.parametrize("w,h", [(40, 32), (32, 40), (64, 64), (23, 19), (301, 97), (97, 301), (28, 28), (111, 110)])
def test_resized_size_matches_torchvision(w, h):
    for size in (28, 31, 110, 256):
        th, tw = _compute_resized_output_size((h, w), [size])
        assert resized_size(w, h, size) == (tw, th)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_matches_eval_transform_on_generated_images(name, tiny_images):
    pre = RECIPES[name]
    recipe = pre.to_dict()
    for files in tiny_images.values():
        for path in files:
            img = Image.open(path)
            got = to_array(img, recipe)
            want = _reference(img, pre)
            assert got.dtype == np.float32 and got.shape == want.shape == (pre.in_chans, pre.image_size, pre.image_size)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"{path} with {name}")


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["effnet-bicubic", "imagenet-bilinear", "gray-conv4"])
def test_matches_eval_transform_on_real_images(name, real_images):
    pre = RECIPES[name]
    for path in real_images:
        img = Image.open(path)
        np.testing.assert_allclose(to_array(img, pre.to_dict()), _reference(img, pre), rtol=0, atol=1e-6)


def test_center_crop_pads_small_images_like_torchvision():
    arr = np.arange(5 * 3, dtype=np.uint8).reshape(5, 3, 1) + 1
    out = center_crop(arr, 6)
    assert out.shape == (6, 6, 1)
    # torchvision pads (left, top, right, bottom) = (1, 0, 2, 1) for 3x5 -> 6x6
    np.testing.assert_array_equal(out[:5, 1:4, 0], arr[:, :, 0])
    assert out[5].sum() == 0 and out[:, 0].sum() == 0 and out[:, 4:].sum() == 0


def test_to_batch_stacks_and_refuses_nothing(tiny_images):
    recipe = RECIPES["gray-conv4"].to_dict()
    imgs = [Image.open(p) for p in tiny_images["red"][:3]]
    assert to_batch(imgs, recipe).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="no images"):
        to_batch([], recipe)


def test_unknown_interpolation_is_an_error(tiny_images):
    recipe = {**RECIPES["effnet-bicubic"].to_dict(), "interpolation": "sinc"}
    with pytest.raises(ValueError, match="unknown interpolation 'sinc'"):
        to_array(Image.open(tiny_images["red"][0]), recipe)
