"""The engine for a frozen backbone: the fastest exact one at each batch size, measured once.

``select_engine(module, preprocess)`` with ``engine="auto"`` returns an ``AutoEngine``
(``auto.py``): every installed engine is checked against PyTorch eager (within
``TOLERANCE``) and timed at each batch size of ``MEASURE_BATCHES`` (``measure.py``), and each
batch runs on the engine fastest at its size. The outcome is written to
``<cache>/engines/choices.json``, keyed by the machine (CPU, threads, GPU, engine versions),
the weights fingerprint, the input size and the precision, so it is measured once. A record
of the format before per-batch figures (one batch size, 16) is measured again, once, and
replaced: it says nothing about the other sizes, and the size it saw was the wrong one for
the pipeline's batches. bf16 is never chosen unless asked for (``precision="bfloat16"``):
the exactness rule of the project keeps float32 the default until a benchmark shows the
paper's tables unchanged under bf16.
"""

from __future__ import annotations

import weakref

from torch import nn

from imprinting.engines import runtimes
from imprinting.engines.auto import AutoEngine
from imprinting.engines.base import PRECISIONS, Engine, EngineError, EngineUnavailable
from imprinting.engines.choice import Choice
from imprinting.engines.measure import (
    CHOICES,
    MEASURE_BATCHES,
    MEASURE_RUNS,
    TOLERANCE,
    check_batch,
    choice_key,
    embedding_difference,
    measure,
    recorded_choice,
    save_choice,
)
from imprinting.engines.runtimes import (
    ENGINES,
    available_engines,
    build_engine,
    cpu_bf16,
    engine_precisions,
    machine_key,
    torch_device,
)
from imprinting.engines.torch_engine import TorchEngine, module_device
from imprinting.spec import fingerprint


def _builder(module: nn.Module, shape, precision: str, fp: str, cache):
    """``build(name)`` for an ``AutoEngine``, holding the module weakly (the model owns it;
    ``imprinting.engines.frozen_engine`` keeps engines in a dict weak on the module)."""
    ref = weakref.ref(module)

    def build(name: str) -> Engine:
        m = ref()
        if m is None:
            raise RuntimeError("the module of this engine no longer exists")
        return runtimes.build_engine(name, m, shape, precision, fp, cache)

    return build


def select_engine(module: nn.Module, preprocess, engine: str = "auto", precision: str = "auto", cache=None,
                  batch: int | None = None) -> Engine:
    """The engine that runs the frozen ``module`` on images of ``preprocess``.

    ``engine``: ``"auto"`` (an ``AutoEngine``: each batch on the fastest exact engine
    installed at its size, measured once and remembered), or a name of ``ENGINES``.
    ``precision``: ``"auto"`` (float32), ``"float32"`` or ``"bfloat16"`` (only when asked
    for). ``batch``: the engine for batches of this size only (``AutoEngine.engine_for``). A
    backbone without weights (a reshape) and one on a GPU run in PyTorch. ``cache``: the cache
    folder (default ``imprinting.cache.cache_dir()``), whose ``engines/`` keeps graphs and choices.
    """
    precision = "float32" if precision in (None, "auto") else precision
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if engine not in ("auto", *ENGINES):
        raise EngineError(f"unknown engine {engine!r}; choose auto, {', '.join(ENGINES)}")
    shape = (preprocess.in_chans, preprocess.image_size, preprocess.image_size)
    if engine == "torch" or not any(True for _ in module.parameters()) or module_device(module).type != "cpu":
        return TorchEngine(module, precision, torch_device(module))
    fp = fingerprint(module)
    if engine != "auto":
        return runtimes.build_engine(engine, module, shape, precision, fp, cache)
    auto = _auto(module, preprocess, shape, precision, fp, cache)
    return auto.engine_for(batch) if batch is not None else auto


def _auto(module: nn.Module, preprocess, shape, precision: str, fp: str, cache) -> AutoEngine:
    key = choice_key(fp, shape, precision)
    build = _builder(module, shape, precision, fp, cache)
    record, choice = recorded_choice(key, cache)
    if choice is not None:
        try:
            return AutoEngine(choice, build, precision=precision, record=record)
        except EngineUnavailable:
            pass  # measured again below
    built, record = measure(module, preprocess, precision, fp, cache)
    save_choice(key, record, cache)
    return AutoEngine(Choice.from_record(record), build, built, precision, record)


__all__ = [
    "CHOICES",
    "ENGINES",
    "MEASURE_BATCHES",
    "MEASURE_RUNS",
    "TOLERANCE",
    "AutoEngine",
    "available_engines",
    "build_engine",
    "check_batch",
    "cpu_bf16",
    "embedding_difference",
    "engine_precisions",
    "machine_key",
    "measure",
    "select_engine",
]
