"""Data sets in their standard on-disk layouts, as lists of (image path, label).

Every reader returns ``ImageSet`` objects: paths, integer labels and the class names that
the labels index. Readers never decode images; ``imprinting.data.features`` does that once
and caches the backbone features.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from imprinting.errors import UserError


class DatasetError(UserError):
    """A data set that is missing or malformed; the message names the file."""


@dataclass
class ImageSet:
    """Image files with integer labels into ``class_names``."""

    name: str
    paths: list[Path]
    labels: list[int]
    class_names: list[str]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices, name: str | None = None) -> "ImageSet":
        indices = list(indices)
        return ImageSet(
            name or self.name,
            [self.paths[i] for i in indices],
            [self.labels[i] for i in indices],
            self.class_names,
            dict(self.meta),
        )


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: the argument, else $IMPRINTING_DATA, else ./data."""
    return Path(root or os.environ.get("IMPRINTING_DATA") or "data")
