"""The contract every low-shot method keeps (see ``imprinting.methods``): ``Method.fit(data,
episode) -> FitResult``. Its own module, so that each method's module imports the contract
without importing the package that lists every method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from imprinting.protocol import Episode, LowShotData

Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FitResult:
    """What fitting one episode gives: the scorer, the training history, extra facts."""

    scorer: Scorer
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


class Method:
    name = "method"

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        raise NotImplementedError
