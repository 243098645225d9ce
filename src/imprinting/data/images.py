"""Reading images from disk with errors that name the file."""

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


class ImageError(UserError):
    """An image that cannot be read: missing, not an image, truncated, too large."""


def load_image(path: str | os.PathLike, mode: str = "RGB", max_pixels: int = MAX_PIXELS,
               reduce_to: int | None = None) -> Image.Image:
    """Open and fully decode an image, converted to ``mode``; any failure names the file.

    ``reduce_to``: the short side the image will be resized to. A JPEG is then decoded at
    the smallest of its DCT scales (1/2, 1/4, 1/8) that keeps the short side at least that
    long (Pillow's ``draft``): several times faster, and the resized pixels change a little
    (``tests/engines/test_pipeline.py`` states how much). ``None``: full size.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise ImageError(f"{path}: {img.width}x{img.height} pixels is more than the limit of {max_pixels}")
            full = img.size
            scale = draft(img, reduce_to) if reduce_to and img.format == "JPEG" else 1
            img.load()
            out = img.convert(mode)
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
