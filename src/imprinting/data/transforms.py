"""Image transforms: the paper's recipe (resize 256, crop 224, intensities in [-1, 1]), with
each backbone's own normalization and an image-size option for CPU runs."""

from __future__ import annotations

import torchvision.transforms as T

from imprinting.backbones import Preprocess

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
