"""What every engine is: a frozen backbone behind ``run(batch) -> features``.

An engine runs one backbone with fixed weights on images of one size. It takes a batch of
preprocessed images, (N, C, H, W) float32 as a numpy array or a torch tensor, and returns
the pooled features, (N, F) float32 torch tensor on the CPU. It never trains: training
always runs the PyTorch module itself (``imprinting.train``).
"""

from __future__ import annotations

import numpy as np
import torch

from imprinting.errors import UserError

PRECISIONS = ("float32", "bfloat16")


class EngineError(UserError):
    """An engine or precision name that does not exist."""


class EngineUnavailable(UserError):
    """An engine that cannot run here: not installed, no such hardware support, or a backbone
    it cannot take. The message says why."""


class Engine:
    """A frozen backbone behind ``run``; ``name`` and ``precision`` say what runs it."""

    name = "engine"

    def __init__(self, precision: str = "float32"):
        if precision not in PRECISIONS:
            raise EngineError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision

    uses_cpu = True  # it computes on the CPU's cores (the decoding pipeline takes turns with it)

    @property
    def exact(self) -> bool:
        """float32 engines give PyTorch's features to within 1e-5 (checked before use by
        ``select_engine``); other precisions do not."""
        return self.precision == "float32"

    def run(self, batch) -> torch.Tensor:
        """Features (N, F) float32 (CPU) of preprocessed images (N, C, H, W) float32."""
        raise NotImplementedError

    choice = None  # the measured per-batch choice behind an automatic engine (``auto.AutoEngine``)

    def engine_for(self, batch: int) -> "Engine":
        """The engine a batch of ``batch`` images runs on: this one (an ``AutoEngine`` picks
        per batch size)."""
        return self

    def best_batch(self) -> int | None:
        """The most images worth putting in one forward pass, as measured; ``None``: not
        measured (an engine named rather than chosen)."""
        return None

    def details(self) -> str:
        return ""

    def describe(self) -> str:
        """One line naming the engine, precision and settings, for result headers."""
        extra = self.details()
        return f"{self.name} {self.precision}" + (f" ({extra})" if extra else "")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def as_numpy(batch) -> np.ndarray:
    """(N, C, H, W) float32, C-contiguous, as numpy (a view when it already is)."""
    if torch.is_tensor(batch):
        batch = batch.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)


def as_tensor(batch) -> torch.Tensor:
    if torch.is_tensor(batch):
        return batch.float() if batch.dtype != torch.float32 else batch
    return torch.from_numpy(np.asarray(batch, dtype=np.float32))


def threads() -> int:
    """The CPU threads an engine uses: PyTorch's setting, so one knob governs them all."""
    return max(1, torch.get_num_threads())
