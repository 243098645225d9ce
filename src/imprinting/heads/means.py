"""The whitened class means: a shared within-class covariance, its shrinkage and the shot
correction (numpy only); the maths the protocol's method and the product's head share."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHRINKAGES = (0.5, 0.7, 0.8, 0.9, 0.95)
CORRECTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class FeatureMap:
    """x -> normalize(max(x, 0) ** power) - centre (``power=None``: no power transform)."""

    power: float | None = 0.5
    centre: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.power:
            x = np.maximum(x, 0) ** self.power
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x - self.centre if self.centre is not None else x


def within_class_scatter(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
    """(sum over classes of the scatter of x around its class mean, degrees of freedom)."""
    d = x.shape[1]
    scatter = np.zeros((d, d))
    classes = np.unique(y)
    for c in classes:
        z = x[y == c]
        z = z - z.mean(axis=0)
        scatter += z.T @ z
    return scatter, len(x) - len(classes)


@dataclass
class WhitenedMeans:
    """The head: a shared covariance, its shrinkage and the shot correction (see the module)."""

    covariance: np.ndarray  # (D, D) within-class covariance of the mapped features
    shrinkage: float = 0.8
    correction: float | dict = 0.75  # one strength, or {n: strength} by shot count
    precision: np.ndarray = field(init=False, repr=False)
    excess: float = field(init=False)  # tr(P S): the whitened excess length of a one-shot mean

    def __post_init__(self) -> None:
        s = np.asarray(self.covariance, np.float64)
        d = s.shape[0]
        shrunk = (1 - self.shrinkage) * s + self.shrinkage * (np.trace(s) / d) * np.eye(d)
        self.precision = np.linalg.inv(shrunk)
        self.excess = float(np.einsum("ij,ji->", self.precision, s))

    def weights(self, means: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) with scores = x @ W.T + b, for class means (C, D) of ``counts`` examples."""
        w = means @ self.precision
        n = np.maximum(np.asarray(counts, np.float64), 1)
        b = -0.5 * (np.einsum("cd,cd->c", w, means) - self.strength(n) * self.excess / n)
        return w, b

    def strength(self, n: np.ndarray) -> np.ndarray:
        """The correction for classes of ``n`` examples: with one strength per shot count,
        that of the largest simulated count not above n (the smallest for fewer)."""
        if not isinstance(self.correction, dict):
            return np.full(len(n), float(self.correction))
        known = np.array(sorted(self.correction), np.float64)
        values = np.array([self.correction[k] for k in sorted(self.correction)], np.float64)
        return values[np.maximum(np.searchsorted(known, n, side="right") - 1, 0)]

    def scores(self, x: np.ndarray, means: np.ndarray, counts: np.ndarray) -> np.ndarray:
        w, b = self.weights(means, counts)
        return x @ w.T + b


def class_means(x: np.ndarray, y: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(means (C, D), counts (C,)) of the rows of x by label (a class without rows: zeros)."""
    sums = np.zeros((classes, x.shape[1]))
    np.add.at(sums, y, x)
    counts = np.bincount(y, minlength=classes)
    return sums / np.maximum(counts, 1)[:, None], counts


