"""The automatic engine: for each batch, the engine measured fastest at its size.

``select_engine(..., engine="auto")`` returns an ``AutoEngine``: it runs a batch of ``b``
images on ``engine_for(b)``, the exact engine measured fastest at that batch size
(``choice.Choice``: a small table of batch ranges), building each engine of the table the
first time a batch of its range comes (the measurement hands over the ones it built). Every
engine of the table is exact (within 1e-5 of PyTorch eager's embeddings), so a batch's
features do not depend on its size beyond that.

``engine_for(b)`` and ``best_batch()`` are what a batching caller asks: which engine a batch
of ``b`` images will run on, and the batch size past which the measurement saw no gain.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from imprinting.engines.base import Engine, EngineUnavailable
from imprinting.engines.choice import Choice


class AutoEngine(Engine):
    """The engines of a measured ``Choice``, each batch on the one for its size.

    ``build(name)`` makes the engine ``name`` (it may raise ``EngineUnavailable``: that range
    then runs on the engine of the largest batches); ``built``: engines already made.
    ``name`` is the engine of the largest batches (the pipeline's).
    """

    def __init__(self, choice: Choice, build: Callable[[str], Engine], built: dict[str, Engine] | None = None,
                 precision: str = "float32", record: dict | None = None):
        super().__init__(precision)
        self.choice, self.record, self._build = choice, record or {}, build
        self._engines = {n: e for n, e in (built or {}).items() if n in choice.names()}
        self._lock = threading.Lock()
        self.primary = self._engine(choice.name_for(choice.batches[-1]))

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.primary.name

    @property
    def uses_cpu(self) -> bool:  # type: ignore[override]
        return any(getattr(e, "uses_cpu", True) for e in self._engines.values())

    def _engine(self, name: str) -> Engine:
        engine = self._engines.get(name)
        if engine is not None:
            return engine
        with self._lock:
            if name not in self._engines:
                try:
                    self._engines[name] = self._build(name)
                except EngineUnavailable:
                    if not hasattr(self, "primary"):
                        raise
                    self._engines[name] = self.primary  # built for the measurement, gone since
            return self._engines[name]

    def engine_for(self, batch: int) -> Engine:
        """The engine a batch of ``batch`` images runs on."""
        return self._engine(self.choice.name_for(batch))

    def best_batch(self) -> int:
        """The largest measured batch size within 5 % of the highest images/s measured."""
        return self.choice.best_batch()

    def images_per_s(self, batch: int) -> float | None:
        """The images/s measured for the engine of ``batch`` at the size it was measured at."""
        return self.choice.images_per_s(batch)

    def run(self, batch) -> torch.Tensor:
        return self.engine_for(len(batch)).run(batch)

    def describe(self) -> str:
        """The engine of the largest batches; with others for smaller batches, each with its
        ranges: "openvino float32 (...) for batches of 4 or more; onnxruntime float32 (...) for 1-3"."""
        names = self.choice.names()
        texts = {}
        for n in names:
            e = self._engines.get(n)
            texts[n] = e.describe() if e is not None else f"{n} {self.precision}"
        if len(names) == 1:
            return texts[names[0]]
        parts = [f"{texts[n]} for {'batches of ' if i == 0 else ''}{', '.join(self.choice.spans_of(n))}"
                 for i, n in enumerate(names)]
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"<AutoEngine {self.describe()}>"
