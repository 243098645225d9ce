"""Row arrays of the class table: normalization and a growable buffer (numpy only)."""

from __future__ import annotations

import numpy as np


def normalize_rows(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x / max(||x||, 1e-12)`` along ``axis``: torch.nn.functional.normalize in numpy."""
    x = np.asarray(x)
    if x.ndim == 2 and axis in (-1, 1):
        norm = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # no (C, D) temporary
    else:
        norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    return x / np.maximum(norm, 1e-12)


def template_of(vectors: np.ndarray) -> np.ndarray:
    """Unit-length float32 rows of ``vectors`` (normalized in float64)."""
    return normalize_rows(np.asarray(vectors, dtype=np.float64)).astype(np.float32)


class Rows:
    """An (n, ...) array that grows by appending rows, with capacity doubling, so adding
    100,000 rows one at a time copies O(100,000) rows in all. ``view`` is the used part."""

    def __init__(self, initial: np.ndarray):
        initial = np.asarray(initial)
        self._buf = np.array(initial, copy=True)
        self._n = initial.shape[0]

    def __len__(self) -> int:
        return self._n

    @property
    def view(self) -> np.ndarray:
        return self._buf[: self._n]

    def append(self, rows: np.ndarray) -> None:
        k = rows.shape[0]
        if self._n + k > self._buf.shape[0]:
            grown = np.zeros((max(2 * self._buf.shape[0], self._n + k, 16), *self._buf.shape[1:]), self._buf.dtype)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : self._n + k] = rows
        self._n += k

    def insert(self, index: int, row: np.ndarray) -> None:
        self.append(row[None])
        self._buf[index + 1 : self._n] = self._buf[index : self._n - 1].copy()
        self._buf[index] = row

    def delete(self, index: int) -> None:
        self._buf[index : self._n - 1] = self._buf[index + 1 : self._n].copy()
        self._n -= 1
