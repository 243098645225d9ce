"""``load_image`` hands back decoded pixels with no file left open behind them: single-frame
files as they are (no copy), multi-frame ones (TIFF pages, APNG) converted, the first frame's
pixels either way."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from imprinting.data.images import load_image


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd (Linux)")
@pytest.mark.parametrize("kind", ["png", "jpeg", "tiff-pages", "apng"])
def test_no_file_stays_open_behind_a_loaded_image(tmp_path, kind):
    rng = np.random.default_rng(7)
    frames = [Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)) for _ in range(2)]
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.{kind.split('-')[0]}"
        if kind in ("tiff-pages", "apng"):
            frames[0].save(path, format="TIFF" if kind == "tiff-pages" else "PNG", save_all=True, append_images=frames[1:])
        else:
            frames[0].save(path, format=kind.upper())
        paths.append(path)
    with Image.open(paths[0]) as opened:
        assert getattr(opened, "n_frames", 1) == (2 if "-" in kind or kind == "apng" else 1)
        first = np.asarray(opened.convert("RGB"))
    before = open_files()
    kept = [load_image(p, "RGB") for p in paths]  # kept alive, as the pipeline keeps them
    assert open_files() == before
    assert all(img.mode == "RGB" and np.array_equal(np.asarray(img), first) for img in kept)
