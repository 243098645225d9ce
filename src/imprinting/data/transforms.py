"""Image transforms: the paper's recipe (resize 256, crop 224, intensities in [-1, 1]), with
each backbone's own normalization and an image-size option for CPU runs."""

from __future__ import annotations

import torch
import torchvision.transforms as T
from PIL import Image

from imprinting.backbones import Preprocess
from imprinting.data.crop import center_crop
from imprinting.data.images import check_decoded, resized_size

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def _finish(pre: Preprocess) -> list:
    return [T.ToTensor(), T.Normalize(pre.mean, pre.std)]


def eval_transform(pre: Preprocess) -> T.Compose:
    """Resize the short side, take the centre crop, normalize (testing)."""
    interp = _INTERPOLATION[pre.interpolation]
    return T.Compose([T.Resize(pre.resize_size, interpolation=interp), T.CenterCrop(pre.image_size), *_finish(pre)])


class eval_crop:
    """The geometric part of ``eval_transform``: PIL image in, resized centre crop (PIL) out.

    An image decoded at a reduced JPEG scale (``load_image(..., reduce_to=...)``, which
    records ``full_size`` and ``draft_scale`` in its ``info``) is resized to the size the full
    image would take, from the region the full image covers, so only the pixels' values
    change, not where they are. Otherwise only the crop is resized where that gives the same
    pixels (``imprinting.data.crop``). An image too thin to resize (``check_image_size``: its
    aspect ratio) is an ``ImageError`` before anything is resized.
    """

    def __init__(self, pre: Preprocess):
        self.interp = _INTERPOLATION[pre.interpolation]
        self.resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[pre.interpolation]
        self.resize, self.center = T.Resize(pre.resize_size, interpolation=self.interp), T.CenterCrop(pre.image_size)
        self.resize_size, self.crop_size = pre.resize_size, pre.image_size

    def __call__(self, img):
        check_decoded(img, resize_to=self.resize_size)  # a thin image would resize to gigabytes
        full = img.info.get("full_size")
        if full is None:
            fast = center_crop(img, self.resize_size, self.crop_size, self.resample)
            return fast if fast is not None else self.center(self.resize(img))
        (w, h), k = full, img.info["draft_scale"]
        tw, th = resized_size(w, h, self.resize_size)  # torchvision's rule
        return self.center(img.resize((tw, th), self.resample, box=(0, 0, w / k, h / k)))

    def shrink(self, img):
        """``eval_transform``'s resize of ``img`` when it makes it smaller (what a server keeps
        of an upload until its crop is taken); ``img`` itself when it would grow it, since
        the crop is then resized from it, computing only the crop: the same pixels."""
        tw, th = resized_size(img.width, img.height, self.resize_size)
        return self.resize(img) if tw * th < img.width * img.height else img


def normalize_table(pre: Preprocess):
    """float32 (C, 256): what ``eval_transform``'s ToTensor + Normalize make of each 8-bit
    value in each channel, computed by those very operations (so a lookup is bit-identical)."""
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(pre.in_chans, 1, 256).contiguous()
    return T.Normalize(pre.mean, pre.std)(levels.to(torch.float32).div(255)).reshape(pre.in_chans, 256).numpy()


def train_transform(pre: Preprocess) -> T.Compose:
    """Resize the short side, random crop, random horizontal flip, normalize (training and
    augmented imprinting)."""
    interp = _INTERPOLATION[pre.interpolation]
    return T.Compose(
        [
            T.Resize(pre.resize_size, interpolation=interp),
            T.RandomCrop(pre.image_size),
            T.RandomHorizontalFlip(),
            *_finish(pre),
        ]
    )


def image_mode(pre: Preprocess) -> str:
    """The PIL mode images are converted to before the transform."""
    return "L" if pre.in_chans == 1 else "RGB"
