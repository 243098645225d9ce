"""Small helpers for tests: tiny images, real-image picks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def run_cli(*args):
    """``imprint ARGS`` in-process (click's runner); exceptions propagate, so a traceback fails the test."""
    from click.testing import CliRunner

    from imprinting.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result, exit_code: int, *words) -> str:
    """A click run's output is exactly one ``Error:`` line holding every word, with this exit
    code and no traceback."""
    message = result.output.strip()
    assert result.exit_code == exit_code, (result.exit_code, message, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert message.startswith("Error:") and len(message.splitlines()) == 1, message
    assert "Traceback" not in message
    for w in words:
        assert w in message, message
    return message


def make_image(path: Path, color=(200, 30, 30), size=(40, 32), noise: int = 20, seed: int = 0) -> Path:
    """A small image of one colour plus noise, written to ``path``."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color)[None, None, :] + rng.integers(-noise, noise + 1, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def cub_images(shared: Path, per_class: int = 1, classes: int = 8) -> list[Path]:
    folders = sorted((shared / "cub" / "CUB_200_2011" / "images").iterdir())[:classes]
    return [f for folder in folders for f in sorted(folder.glob("*.jpg"))[:per_class]]


def class_folder(root: Path, classes: int = 4, per_class: int = 4) -> Path:
    colors = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (200, 200, 40), (160, 40, 200), (40, 200, 200)]
    for c in range(classes):
        for i in range(per_class):
            make_image(root / f"class_{c}" / f"{i}.png", colors[c % len(colors)], size=(30 + 3 * i, 28), noise=60,
                       seed=100 * c + i)
    return root
