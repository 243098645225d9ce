"""Resize the short side, take the centre crop: torchvision's ``Resize`` + ``CenterCrop`` on a
PIL image, pixel for pixel, computing only the crop.

Pillow resizes in two passes, one along each axis, each rounding to 8 bits; an output pixel
of a pass depends only on its own row (horizontal pass) or column (vertical pass). So:

* the first pass's columns (or rows) outside the crop can be dropped before the second pass,
  which then filters only the crop's width (or height): exact;
* a pass can compute only the crop's outputs by a ``box`` (Pillow's region of the source) when
  the box's float32 corners and Pillow's double arithmetic hold the full resize's filter
  positions exactly: when input size / output size is a dyadic fraction, as it is along the
  short side whenever the resize target is a power of two (256 for 224 crops);
* then the first pass needs only the input rows (or columns) the second pass reads.

The passes run in Pillow's own order (``Resample.c``, Pillow 13: vertical first when the
height shrinks by more than twice what the width does), and each fast path is checked once a
process against Pillow's own resize on a few shapes; any difference (another Pillow) turns it
off, so the pixels are always torchvision's. On Flowers-102 photos (224 px short side, bicubic
to 256, crop 224) it takes about 0.65 ms a photo against 0.83 for the whole resize
(``benchmarks/engines.py``, its "resize + centre crop alone" row; docs/engines.md).
"""

from __future__ import annotations

import logging
from fractions import Fraction
from functools import lru_cache

import numpy as np
from PIL import Image

from imprinting.data.images import resized_size

log = logging.getLogger(__name__)

SUPPORT = {Image.Resampling.BILINEAR: 1.0, Image.Resampling.BICUBIC: 2.0}  # Pillow's filter supports


def _offset(size: int, crop: int) -> int:
    """Where torchvision's ``CenterCrop`` starts a crop of ``crop`` in ``size`` pixels."""
    return int(round((size - crop) / 2.0))


def _f32(x: Fraction) -> bool:
    return Fraction(float(np.float32(float(x)))) == x


class _Axis:
    """One axis of the resize: ``n_in`` -> ``n_out`` pixels, of which the crop keeps
    ``first``, ..., ``first + count - 1``."""

    def __init__(self, n_in: int, n_out: int, first: int, count: int, support: float):
        self.n_in, self.n_out, self.first, self.count = n_in, n_out, first, count
        self.scale = n_in / n_out
        self.support = support * max(self.scale, 1.0)
        d = Fraction(n_in, n_out).denominator
        self.boxable = d & (d - 1) == 0  # dyadic: filter positions exact in a box

    def reads(self) -> tuple[int, int]:
        """The input range [lo, hi) Pillow's filter reads for the crop's outputs (its
        ``precompute_coeffs``: centres rise with the output index)."""
        lo = int((self.first + 0.5) * self.scale - self.support + 0.5)
        hi = int((self.first + self.count - 0.5) * self.scale + self.support + 0.5)
        return max(0, lo), min(self.n_in, hi)

    def box(self, shift: int) -> tuple[float, float] | None:
        """The crop's box along this axis in an input cut to start at ``shift``, or ``None``
        when float32 corners cannot hold it exactly."""
        a = Fraction(self.first * self.n_in, self.n_out) - shift
        b = Fraction((self.first + self.count) * self.n_in, self.n_out) - shift
        return (float(a), float(b)) if self.boxable and _f32(a) and _f32(b) else None


def _pass(size: tuple[int, int], vertical: bool, axis: _Axis, shift: int, resample) -> list[tuple]:
    """The Pillow calls of one pass along one axis of an image of ``size``, down to the crop's
    outputs along it: ``("resize", size, resample, box)`` or ``("crop", box)`` steps."""
    w, h = size
    box = axis.box(shift)
    if box is not None:
        out, region = ((w, axis.count), (0, box[0], w, box[1])) if vertical else \
            ((axis.count, h), (box[0], 0, box[1], h))
        return [("resize", out, resample, region)]
    full = (w, axis.n_out) if vertical else (axis.n_out, h)
    a, b = axis.first, axis.first + axis.count
    return [("resize", full, resample, (0, 0, *size)), ("crop", (0, a, w, b) if vertical else (a, 0, b, h))]


@lru_cache(maxsize=4096)
def plan(width: int, height: int, resize_to: int, crop: int, resample) -> tuple | None:
    """The Pillow calls that turn an image of this size into its resized centre crop, or
    ``None`` where torchvision pads (a crop larger than the resized image) or the filter is
    not one this module knows. Sizes repeat, so plans are kept."""
    w, h = width, height
    tw, th = resized_size(w, h, resize_to)
    if crop > tw or crop > th or resample not in SUPPORT:
        return None
    x = _Axis(w, tw, _offset(tw, crop), crop, SUPPORT[resample])
    y = _Axis(h, th, _offset(th, crop), crop, SUPPORT[resample])
    if (w, h) == (tw, th):
        return (("crop", (x.first, y.first, x.first + crop, y.first + crop)),)
    vertical_first = (h - th) > 0 and (h - th) > (w - tw) * 2  # Pillow 13's order of passes
    first, second = (y, x) if vertical_first else (x, y)
    steps: list[tuple] = []
    lo, hi = second.reads() if second.box(0) is not None else (0, second.n_in)
    if (lo, hi) != (0, second.n_in):  # the first pass runs only on what the second reads
        steps.append(("crop", (lo, 0, hi, h) if vertical_first else (0, lo, w, hi)))
        w, h = (hi - lo, h) if vertical_first else (w, hi - lo)
    steps += _pass((w, h), vertical_first, first, 0, resample)
    w, h = (w, crop) if vertical_first else (crop, h)
    steps += _pass((w, h), not vertical_first, second, lo, resample)
    return tuple(steps)


def _crop(img: Image.Image, resize_to: int, crop: int, resample) -> Image.Image | None:
    steps = plan(img.width, img.height, resize_to, crop, resample) if img.mode in ("L", "RGB") else None
    if steps is None:
        return None
    for step in steps:
        img = img.crop(step[1]) if step[0] == "crop" else img.resize(step[1], step[2], box=step[3])
    return img


def reference(img: Image.Image, resize_to: int, crop: int, resample) -> Image.Image:
    """What torchvision's ``Resize(resize_to)`` + ``CenterCrop(crop)`` do to a PIL image no
    smaller than the crop once resized: the whole resize, then the crop."""
    w, h = img.size
    tw, th = resized_size(w, h, resize_to)
    left, top = _offset(tw, crop), _offset(th, crop)
    return img.resize((tw, th), resample).crop((left, top, left + crop, top + crop))


_PROBES = ((299, 224), (224, 299), (700, 333), (333, 700), (1000, 150), (150, 1000), (257, 255), (97, 61))


@lru_cache(maxsize=None)
def exact(resize_to: int, crop: int, resample) -> bool:
    """Whether the fast path gives ``reference``'s pixels with this Pillow: checked once a
    process on random images of shapes that take every branch (both pass orders, boxes or
    not, rows cut or not), in both modes."""
    rng = np.random.default_rng(0)
    for w, h in _PROBES:
        for channels in (3, 1):
            pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
            img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
            fast = _crop(img, resize_to, crop, resample)
            if fast is not None and not np.array_equal(np.asarray(fast), np.asarray(reference(img, resize_to, crop, resample))):
                log.warning("resizing only the crop differs from Pillow %s's resize at %dx%d: resizing whole images",
                            Image.__version__, w, h)
                return False
    return True


def center_crop(img: Image.Image, resize_to: int, crop: int, resample) -> Image.Image | None:
    """torchvision's ``CenterCrop(crop)(Resize(resize_to, resample)(img))``, computing only the
    crop where that gives the same pixels (``exact``); torchvision's own path otherwise
    (padding, other filters or modes) is the caller's: ``None`` then."""
    if not exact(resize_to, crop, resample):
        return None
    return _crop(img, resize_to, crop, resample)
