"""What the service keeps and shows of an example besides its embedding: a small JPEG of the
image (for the page's list of a class's examples), as a data URL, and times in ISO 8601."""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone

from PIL import Image


def jpeg_thumbnail(image: Image.Image, pixels: int = 128, quality: int = 80) -> bytes:
    """``image`` shrunk to fit ``pixels`` x ``pixels`` (aspect kept), as JPEG bytes."""
    small = image.convert("RGB")  # a copy: the caller's image is left as it was
    small.thumbnail((pixels, pixels))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def data_url(jpeg: bytes | None) -> str | None:
    return None if jpeg is None else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def iso_time(t: float) -> str:
    """Unix time -> UTC ISO 8601, to the second."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")
