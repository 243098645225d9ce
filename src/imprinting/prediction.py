"""What a prediction returns (no torch: the lite runtime shares these)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Prediction:
    """Top-k answer for one image: names, softmax probabilities and cosine scores."""

    classes: list[str]
    probabilities: list[float]
    cosines: list[float]
    unknown: bool = False

    @property
    def top(self) -> str:
        return self.classes[0]


class UnknownClassError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])
