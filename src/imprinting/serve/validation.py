"""What the service accepts from a client: class names, upload names and image bytes.

Everything here is plain Python over Pillow (no FastAPI), so the ``Service`` can use it
without HTTP. A client error is an ``ApiError``: the HTTP status, a short machine-readable
code and a sentence naming the problem; the app turns it into ``{"error", "detail"}``.
"""

from __future__ import annotations

import hashlib
import io
import re
import unicodedata
from collections.abc import Sequence

from PIL import Image, UnidentifiedImageError

# Decoders allowed for uploads, chosen by content (PIL sniffs the bytes), never by file name.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

MAX_NAME_LENGTH = 100
# A letter, digit or underscore first; then those, spaces and . , ' ( ) + & -
NAME_PATTERN = re.compile(r"\w[\w .,'()+&-]*")

# One uploaded file: its name as the client sent it (or None) and its bytes.
Upload = tuple[str | None, bytes]


class ApiError(Exception):
    """A client error: HTTP status, a short machine-readable code and a sentence."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def check_class_name(name: str) -> str:
    """Class names: 1-100 characters, letters/digits/_ first, then also . , ' ( ) + & - and
    spaces; no slashes, no control characters, no leading or trailing space."""
    if not name:
        raise ApiError(422, "invalid_class_name", "the class name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ApiError(422, "invalid_class_name", f"the class name is {len(name)} characters long (limit {MAX_NAME_LENGTH})")
    if not NAME_PATTERN.fullmatch(name) or name.endswith(" ") or unicodedata.normalize("NFC", name) != name:
        raise ApiError(
            422,
            "invalid_class_name",
            f"class name {name[:MAX_NAME_LENGTH]!r} is not allowed: use letters, digits, spaces and _ . , ' ( ) + & -, "
            "starting with a letter, digit or _ (no slashes)",
        )
    return name


def display_name(filename: str | None, index: int) -> str:
    """The upload's file name for messages and the store: last path part, printable, short.
    It is a label only, never used as a path."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:100]
    return base or f"image {index + 1}"


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes fully; too many pixels, non-images and damaged files are ApiErrors.
    The pixel count is read from the header before decoding, so bombs are never decoded."""
    if not data:
        raise ApiError(422, "empty_image", f"{name}: the file is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
        if img.width * img.height > max_pixels:
            raise ApiError(
                413, "too_many_pixels", f"{name}: {img.width}x{img.height} pixels is more than the limit of {max_pixels}"
            )
        img.load()
        return img
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "too_many_pixels", f"{name}: more pixels than the limit of {max_pixels} ({exc})") from None
    except UnidentifiedImageError:
        raise ApiError(
            422, "not_an_image", f"{name}: not an image in a supported format ({', '.join(IMAGE_FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ApiError(422, "unreadable_image", f"{name}: damaged or truncated image ({exc})") from None


def read_images(
    uploads: Sequence[Upload], max_images: int, max_pixels: int
) -> tuple[list[Image.Image], list[str], list[str]]:
    """Decode a request's uploads: (images, SHA-256 of each file's bytes, display names).
    One bad file refuses the whole request, so an upload is taught whole or not at all."""
    if not uploads:
        raise ApiError(422, "no_images", "send one or more images in the multipart field 'files'")
    if len(uploads) > max_images:
        raise ApiError(413, "too_many_images", f"{len(uploads)} images in one request; the limit is {max_images}")
    images, shas, names = [], [], []
    for i, (filename, data) in enumerate(uploads):
        name = display_name(filename, i)
        images.append(decode_image(data, name, max_pixels))
        shas.append(hashlib.sha256(data).hexdigest())
        names.append(name)
    return images, shas, names
