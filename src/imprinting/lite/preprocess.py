"""The test-time image transform with Pillow and numpy, matching torchvision's.

``imprinting.data.transforms.eval_transform`` is ``Resize(resize_size, interpolation)`` ->
``CenterCrop(image_size)`` -> ``ToTensor()`` -> ``Normalize(mean, std)``. On PIL images
torchvision's ``Resize`` computes the output size as below and calls ``PIL.Image.resize``
(Pillow always antialiases bilinear and bicubic), and ``CenterCrop`` pads with zeros when the
image is smaller than the crop and rounds the offsets with Python's ``round``. Doing the
same steps here gives the same pixels, and float32 arithmetic gives the same tensor to
within a rounding error.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from imprinting.data.images import ImageError, check_decoded, resized_size

# torchvision.transforms.functional.pil_modes_mapping, for the modes our recipes use
PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def image_mode(recipe: dict) -> str:
    """The PIL mode an image is converted to before the transform."""
    return "L" if int(recipe.get("in_chans", 3)) == 1 else "RGB"


def resize_short_side(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """The short side resized to ``size`` (``resized_size``); an image too thin for that
    (``imprinting.data.images.check_image_size``) is an ``ImageError`` before any resizing."""
    check_decoded(img, resize_to=size)
    try:
        resample = PIL_INTERPOLATION[interpolation]
    except KeyError:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose from {', '.join(PIL_INTERPOLATION)}") from None
    new = resized_size(img.width, img.height, size)
    if new == img.size:
        return img
    return img.resize(new, resample)


def center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """Centre crop an (H, W, C) array to (size, size, C), zero-padding a smaller image first."""
    h, w = arr.shape[:2]
    if size > w or size > h:
        left, top = (size - w) // 2 if size > w else 0, (size - h) // 2 if size > h else 0
        right, bottom = (size - w + 1) // 2 if size > w else 0, (size - h + 1) // 2 if size > h else 0
        arr = np.pad(arr, ((top, bottom), (left, right), (0, 0)))
        h, w = arr.shape[:2]
        if h == size and w == size:
            return arr
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return arr[top : top + size, left : left + size]


def to_array(img: Image.Image, recipe: dict) -> np.ndarray:
    """One PIL image -> float32 (C, H, W), preprocessed like ``eval_transform``."""
    check_decoded(img, resize_to=int(recipe["resize_size"]))  # before converting: the message keeps its file name
    mode = image_mode(recipe)
    if img.mode != mode:
        img = img.convert(mode)
    img = resize_short_side(img, int(recipe["resize_size"]), recipe.get("interpolation", "bilinear"))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = center_crop(arr, int(recipe["image_size"]))
    x = arr.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    mean = np.asarray(recipe["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(recipe["std"], dtype=np.float32)[:, None, None]
    return (x - mean) / std


def to_batch(images, recipe: dict) -> np.ndarray:
    """PIL images -> float32 (N, C, H, W)."""
    arrays = [to_array(img, recipe) for img in images]
    if not arrays:
        raise ImageError("no images given")
    return np.stack(arrays)
