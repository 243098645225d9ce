"""A folder of class folders of small generated images (for the heads' tests)."""

from __future__ import annotations

from pathlib import Path

from helpers import make_image


def class_folder(root: Path, classes: int = 4, per_class: int = 4) -> Path:
    colors = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (200, 200, 40), (160, 40, 200), (40, 200, 200)]
    for c in range(classes):
        for i in range(per_class):
            make_image(root / f"class_{c}" / f"{i}.png", colors[c % len(colors)], size=(30 + 3 * i, 28), noise=60,
                       seed=100 * c + i)
    return root
