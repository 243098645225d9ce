"""Reading images from disk with errors that name the file."""

from __future__ import annotations

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


def load_image(path: str | os.PathLike, mode: str = "RGB", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image, converted to ``mode``; any failure names the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise ImageError(f"{path}: {img.width}x{img.height} pixels is more than the limit of {max_pixels}")
            img.load()
            return img.convert(mode)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None


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
