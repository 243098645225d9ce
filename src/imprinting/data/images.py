"""Reading images from disk with errors that name the file, and the bound on the work an
image may cause (``check_image_size``), decided from its header before anything is decoded."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

from PIL import Image, UnidentifiedImageError

from imprinting.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Refuse decompression bombs: more pixels than this is an error, not a warning.
MAX_PIXELS = 64_000_000

# The long side may be at most this many times the short side. Every path to a model resizes
# the short side to its ``resize_size`` s (torchvision's rule: the long side becomes
# int(s * long / short)), so the resized image depends only on this ratio: at most s x 50 s
# pixels, e.g. 256 x 12,800 = 3.3 M pixels (13 MiB in RGB), whatever the file. Without it a
# 116-byte 1 x 8000 PNG becomes 256 x 2,048,000 (2 GiB in RGB), a 1 x 60,000 one 15 GiB.
# 50:1 passes every camera format, stitched 360-degree panoramas (about 20:1 at most) and
# web banners (about 10:1).
MAX_ASPECT_RATIO = 50


class ImageError(UserError):
    """An image that cannot be read: missing, not an image, truncated, too large."""


class ImageSizeError(ImageError):
    """An image refused for its size alone, from its header. ``code`` says which bound:
    ``too_many_pixels`` (decoding it), ``extreme_aspect_ratio`` (resizing it) or
    ``empty_image`` (no pixels); the service maps them to its error codes."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the short side to ``size`` (torchvision's rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def check_image_size(width: int, height: int, name, max_pixels: int | None = MAX_PIXELS,
                     resize_to: int | None = None, max_aspect: int = MAX_ASPECT_RATIO) -> None:
    """The one rule for what an image may cost, from its size alone; raises ``ImageSizeError``
    naming ``name``.

    * more than ``max_pixels`` pixels (width x height as the header says, before any JPEG
      draft, so never fewer than are decoded): ``too_many_pixels``. ``None``: not checked
      (an image already decoded);
    * a long side more than ``max_aspect`` times the short side (compared exactly, in
      integers): ``extreme_aspect_ratio``. Resizing the short side to s then makes at most
      s x ``max_aspect`` s pixels. ``resize_to`` (s, when known) only adds the size the resize
      would have made to the message; the rule is the same without it.
    """
    if width < 1 or height < 1:
        raise ImageSizeError(f"{name}: {width}x{height} pixels is an image without pixels", "empty_image")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageSizeError(f"{name}: {width}x{height} pixels is more than the limit of {max_pixels}",
                             "too_many_pixels")
    short, long = min(width, height), max(width, height)
    if long > max_aspect * short:
        ratio = f"{long / short:,.3f}".rstrip("0").rstrip(".")
        message = f"{name}: {width}x{height} pixels has an aspect ratio of {ratio}:1, over the limit of {max_aspect}:1"
        if resize_to:
            w, h = resized_size(width, height, resize_to)
            message += f" (resizing its short side to {resize_to} would make it {w:,}x{h:,} pixels)"
        raise ImageSizeError(message, "extreme_aspect_ratio")


def check_decoded(img: Image.Image, name=None, resize_to: int | None = None) -> None:
    """``check_image_size`` for an image already in memory (a PIL image a caller passes, or
    one drafted: its full size, from ``info``, is what the resize makes), before it is
    resized. Its pixels are not counted: they are decoded already."""
    width, height = img.info.get("full_size", img.size)
    label = name or getattr(img, "filename", None) or "image"
    check_image_size(width, height, label, None, resize_to)


def load_image(path: str | os.PathLike, mode: str = "RGB", max_pixels: int = MAX_PIXELS,
               reduce_to: int | None = None) -> Image.Image:
    """Open and fully decode an image, converted to ``mode``; any failure names the file.

    ``reduce_to``: the short side the image will be resized to. A JPEG is then decoded at
    the smallest of its DCT scales (1/2, 1/4, 1/8) that keeps the short side at least that
    long (Pillow's ``draft``): several times faster, and the resized pixels change a little
    (``tests/engines/test_pipeline.py`` states how much). ``None``: full size.

    Before decoding, the header's size must pass ``check_image_size`` (pixels and aspect
    ratio): every caller resizes the short side, and a thin image would be resized to
    gigabytes.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        img = Image.open(path)
        try:
            check_image_size(img.width, img.height, path, max_pixels, reduce_to)
            full = img.size
            scale = draft(img, reduce_to) if reduce_to and img.format == "JPEG" else 1
            img.load()
            # A loaded single-frame image has its file closed (fp None): kept as it is when in
            # ``mode`` already. Otherwise converted (a copy) and the original closed: a
            # multi-frame file (MPO, APNG, TIFF pages) stays open behind an image for its frames.
            kept = img.mode == mode and getattr(img, "n_frames", 1) == 1 and getattr(img, "fp", None) is None
            out = img if kept else img.convert(mode)
        except BaseException:
            img.close()
            raise
        if out is not img:
            img.close()
        if scale > 1:  # what the resize needs to put the pixels where the full image has them
            out.info.update(full_size=full, draft_scale=scale)
        return out
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None


def draft(img: Image.Image, short_side: int) -> int:
    """Ask a JPEG's decoder for the smallest DCT scale whose short side is >= ``short_side``;
    returns the reduction (1, 2, 4 or 8): the image is then ceil(w / k) x ceil(h / k)."""
    w, h = img.size
    scale = short_side / min(w, h)
    if scale > 0.5 or not img.draft(img.mode, (math.ceil(w * scale), math.ceil(h * scale))):
        return 1
    return next(k for k in (2, 4, 8) if math.ceil(w / k) == img.size[0])


def collect_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted list of image files.

    A folder contributes the image files directly inside it (by extension). A missing path
    or a folder without images is an error that names it.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise ImageError(f"{p}: folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
            found.extend(files)
        elif p.is_file():
            found.append(p)
        else:
            raise ImageError(f"{p}: no such file or folder")
    if not found:
        raise ImageError("no images given")
    return found
