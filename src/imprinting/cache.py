"""Where the project keeps what it computes once (backbone features, ONNX graphs, measured engine
choices). A leaf module: the feature cache and the engines both import it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder: the argument, else $IMPRINTING_CACHE, else ~/.cache/imprinting."""
    return Path(path or os.environ.get("IMPRINTING_CACHE") or Path.home() / ".cache" / "imprinting")
