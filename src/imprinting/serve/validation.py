"""What the service accepts from a client: class names, upload names and image bytes.

Everything here is plain Python over Pillow (no FastAPI), so the ``Service`` can use it
without HTTP. A client error is an ``ApiError``: the HTTP status, a short machine-readable
code and a sentence naming the problem; the app turns it into ``{"error", "detail"}``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import secrets
import unicodedata
from collections.abc import Callable, Sequence
from contextlib import nullcontext

from PIL import Image, UnidentifiedImageError

from imprinting.data.images import ImageSizeError, check_image_size, draft

# Decoders allowed for uploads, chosen by content (PIL sniffs the bytes), never by file name.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

MAX_NAME_LENGTH = 100
# A letter, digit or underscore first; then those, spaces and . , ' ( ) + & -
NAME_PATTERN = re.compile(r"\w[\w .,'()+&-]*")

# One uploaded file: its name as the client sent it (or None) and its bytes, or a binary
# file to read them from (read only once the request is admitted: serve.admission).
Upload = tuple[str | None, "bytes | io.BufferedIOBase"]


class ApiError(Exception):
    """A client error (or a 503): HTTP status, a short machine-readable code, a sentence, and
    headers for the answer (``Retry-After``)."""

    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


def unexpected_error(exc: BaseException, where: str) -> str:
    """Log an unexpected exception with a reference, and say only the reference to the client:
    its text may hold paths, queries or data that are the server's business."""
    reference = secrets.token_hex(4)
    logging.getLogger("imprinting.serve").error("internal error %s in %r", reference, where, exc_info=exc)
    return f"an unexpected error in the server (reference {reference}: the server's log has the details)"


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


def open_image(data: bytes, name: str, max_pixels: int, reduce_to: int | None = None) -> Image.Image:
    """The image's header only (nothing decoded yet); non-images and a size the model cannot
    afford are ApiErrors: more than ``max_pixels`` pixels (413 ``too_many_pixels``) or a long
    side over 50 times the short one (422 ``extreme_aspect_ratio``: the model's short-side
    resize would make a few hundred bytes of PNG gigabytes; ``imprinting.data.images.
    check_image_size``). ``reduce_to``: the short side the model resizes to; a JPEG is set to
    decode at the smallest DCT scale that keeps its short side at least that long (Pillow's
    ``draft``; recorded in ``info`` for the crop)."""
    if not data:
        raise ApiError(422, "empty_image", f"{name}: the file is empty (0 bytes)")
    with _image_errors(name, max_pixels):
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
        try:
            check_image_size(img.width, img.height, name, max_pixels, reduce_to)
        except ImageSizeError as exc:
            raise ApiError(413 if exc.code == "too_many_pixels" else 422, exc.code, str(exc)) from None
        full = img.size
        scale = draft(img, reduce_to) if reduce_to and img.format == "JPEG" else 1
        if scale > 1:
            img.info.update(full_size=full, draft_scale=scale)
        return img


def decode_bytes(img: Image.Image, mode: str) -> int:
    """The memory decoding ``img`` (at its drafted size) and converting it to ``mode`` takes:
    Pillow keeps 1 byte a pixel for 1/L/P, 2 for 16-bit, else 4."""
    def per_pixel(m: str) -> int:
        return 1 if m in ("1", "L", "P") else 2 if "16" in m else 4

    return img.width * img.height * (per_pixel(img.mode) + (0 if img.mode == mode else per_pixel(mode)))


def decode_image(img: Image.Image, name: str, mode: str = "RGB", shrink: Callable | None = None,
                 max_pixels: int = 0) -> Image.Image:
    """Decode an image opened by ``open_image`` into ``mode``, then ``shrink`` it (to the size
    the model resizes it to) unless it was drafted; damaged files are ApiErrors."""
    with _image_errors(name, max_pixels):
        info = dict(img.info)
        img.load()
        out = img if img.mode == mode else img.convert(mode)
        out.info.update({k: info[k] for k in ("full_size", "draft_scale") if k in info})
        if shrink is not None and "draft_scale" not in out.info:
            out = shrink(out)
        return out


class _image_errors:
    """Pillow's exceptions as ApiErrors naming the upload."""

    def __init__(self, name: str, max_pixels: int):
        self.name, self.max_pixels = name, max_pixels

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        name = self.name
        if kind is None or issubclass(kind, ApiError):
            return False
        if issubclass(kind, Image.DecompressionBombError):
            raise ApiError(413, "too_many_pixels", f"{name}: more pixels than the limit of {self.max_pixels} ({exc})") from None
        if issubclass(kind, UnidentifiedImageError):
            raise ApiError(
                422, "not_an_image", f"{name}: not an image in a supported format ({', '.join(IMAGE_FORMATS)})"
            ) from None
        if issubclass(kind, (OSError, SyntaxError, ValueError, EOFError)):
            raise ApiError(422, "unreadable_image", f"{name}: damaged or truncated image ({exc})") from None
        return False


def check_uploads(uploads: Sequence[Upload], max_images: int) -> None:
    if not uploads:
        raise ApiError(422, "no_images", "send one or more images in the multipart field 'files'")
    if len(uploads) > max_images:
        raise ApiError(413, "too_many_images", f"{len(uploads)} images in one request; the limit is {max_images}")


def read_image(upload: Upload, index: int, max_pixels: int, *, admission=None, mode: str = "RGB",
               reduce_to: int | None = None, shrink: Callable | None = None) -> tuple[Image.Image, str, str]:
    """Decode upload number ``index`` of a request: (image, SHA-256 of its bytes, display name).

    The process's memory is checked first (``admission.check_memory``: 503 over the
    ceiling); the image is decoded inside ``admission.decoding`` (``serve.admission``) for
    the memory its header says it needs, and shrunk at once (``reduce_to``, ``shrink``)."""
    filename, data = upload
    name = display_name(filename, index)
    if admission is not None:
        admission.check_memory(name)
    if not isinstance(data, bytes):
        data = data.read()
    img = open_image(data, name, max_pixels, reduce_to)
    with admission.decoding(decode_bytes(img, mode), name) if admission is not None else nullcontext():
        image = decode_image(img, name, mode, shrink, max_pixels)
        del img
    return image, hashlib.sha256(data).hexdigest(), name


def read_images(
    uploads: Sequence[Upload], max_images: int, max_pixels: int, *, admission=None, mode: str = "RGB",
    reduce_to: int | None = None, shrink: Callable | None = None,
) -> tuple[list[Image.Image], list[str], list[str]]:
    """Decode a request's uploads one at a time (``read_image``): (images, SHA-256 of each
    file's bytes, display names). One bad file refuses the whole request, so an upload is
    taught whole or not at all. Before each image, and once all are read, the process's
    resident memory is checked against the ceiling (503 over it). (The service decodes in
    its inference worker, ``serve.batcher``, image by image with ``read_image``.)"""
    check_uploads(uploads, max_images)
    images, shas, names = [], [], []
    for i, upload in enumerate(uploads):
        image, sha, name = read_image(upload, i, max_pixels, admission=admission, mode=mode, reduce_to=reduce_to,
                                      shrink=shrink)
        images.append(image)
        shas.append(sha)
        names.append(name)
    if admission is not None:
        admission.check_memory()
    return images, shas, names
