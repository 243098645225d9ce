"""Engines: every frozen forward pass of a backbone on the fastest exact runtime installed.

  base.py                Engine (``run(batch) -> features``, ``name``, ``precision``, ``describe()``)
  torch_engine.py        PyTorch eager, channels_last; CUDA (TF32 off, or bf16 autocast) on a GPU
  onnxruntime_engine.py  onnxruntime, float32
  openvino_engine.py     OpenVINO, float32 (bf16 where the CPU reports BF16)
  graph.py               the backbone's ONNX graph, cached per weights fingerprint and input size
  runtimes.py            available_engines, engine_precisions, build_engine, machine_key
  measure.py             exactness check and timing of every engine at each batch size; choices.json
  choice.py              Choice: the engine per batch-size range, from the recorded figures
  auto.py                AutoEngine: each batch on the engine chosen for its size
  select.py              select_engine (measured once, exact ones only)
  pipeline.py            decoding in threads, taking turns with the engine (the one for its batch size)

Used by the feature cache (``imprinting.data.features``) and ``ImprintModel.embed_images``
(hence imprint, predict, the CLI and the service). Training never goes through an engine.

A batching caller (the service's worker) asks ``engine_for(engine, b)`` for the engine a
batch of ``b`` images runs on and ``best_batch(engine)`` for the most images worth putting in
one forward pass (``DEFAULT_BATCH`` for an engine named rather than chosen).

The engine name ``None`` means the process default: ``set_default`` (the CLI's
``--engine``), else ``$IMPRINTING_ENGINE``, else ``"auto"``; the same for precision.
"""

from __future__ import annotations

import os
import weakref

from torch import nn

from imprinting.engines.auto import AutoEngine
from imprinting.engines.base import PRECISIONS, Engine, EngineError, EngineUnavailable
from imprinting.engines.measure import MEASURE_BATCHES, TOLERANCE
from imprinting.engines.runtimes import ENGINES, available_engines, engine_precisions
from imprinting.engines.select import select_engine
from imprinting.engines.torch_engine import TorchEngine

DEFAULT_BATCH = 32  # the library's batch (``embed_images``): best_batch of an engine that was not measured

_DEFAULT = {"engine": None, "precision": None}
_FROZEN: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_USED: list[str] = []


_KEEP = object()


def set_default(engine: str | None = _KEEP, precision: str | None = _KEEP) -> None:
    """The engine and/or precision that ``None`` stands for in this process (the CLI's
    ``--engine`` and ``--precision``); ``None`` goes back to $IMPRINTING_ENGINE or "auto"."""
    if engine is not _KEEP:
        if engine is not None and engine not in ("auto", *ENGINES):
            raise EngineError(f"unknown engine {engine!r}; choose auto, {', '.join(ENGINES)}")
        _DEFAULT["engine"] = engine
    if precision is not _KEEP:
        if precision is not None and precision not in ("auto", *PRECISIONS):
            raise EngineError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
        _DEFAULT["precision"] = precision


def default_engine() -> str:
    return _DEFAULT["engine"] or os.environ.get("IMPRINTING_ENGINE") or "auto"


def default_precision() -> str:
    return _DEFAULT["precision"] or os.environ.get("IMPRINTING_PRECISION") or "auto"


def resolve_precision(precision: str | None) -> str:
    """``None`` -> the process default; ``"auto"`` -> float32 (bf16 only when asked for)."""
    precision = precision or default_precision()
    return "float32" if precision == "auto" else precision


def walk(module: nn.Module) -> list[nn.Module]:
    """``module`` and every module under it, once each (a shared module, or a cycle, ends
    there): the modules ``module.train()`` sets, reached through ``_modules`` directly.
    ``modules()`` costs several times as much (names, a generator a level): 0.2 ms on
    EfficientNet-Lite0's 277 modules, for every batch the service runs."""
    out, seen, stack = [], set(), [module]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out.append(m)
        stack.extend(child for child in m._modules.values() if child is not None)
    return out


def in_training(module: nn.Module) -> bool:
    """Whether ``module`` or any module under it is in training mode."""
    return any(m.training for m in walk(module))


def _state(module: nn.Module) -> tuple:
    """Changes whenever a weight does (in-place updates bump ``_version``; new tensors a
    pointer; added or removed ones the length). Read from each module's ``_parameters`` and
    ``_buffers`` (``walk``): ``parameters()`` and ``buffers()`` took 0.43 ms a call."""
    return tuple((t.data_ptr(), t._version) for m in walk(module)
                 for t in (*m._parameters.values(), *m._buffers.values()) if t is not None)


def frozen_engine(module: nn.Module, preprocess, engine: str | None = None, precision: str | None = None,
                  training: bool = False, cache=None) -> Engine:
    """The engine for the frozen ``module``, kept while its weights stay the same.

    ``training=True`` (a module being trained, or a model in training mode) gives PyTorch:
    a backbone being fine-tuned never goes through a frozen engine. ``cache``: the cache
    folder whose ``engines/`` keeps graphs and measured choices (default: ``cache_dir()``).
    """
    if training or module.training and any(p.requires_grad for p in module.parameters()):
        return TorchEngine(module)
    engine = engine or default_engine()
    precision = precision or default_precision()
    request = (engine, precision, preprocess.in_chans, preprocess.image_size, str(cache))
    hit = _FROZEN.get(module)
    if hit is not None and hit[1] == request and hit[0] == _state(module):
        return hit[2]
    chosen = select_engine(module, preprocess, engine, precision, cache)
    _FROZEN[module] = (_state(module), request, chosen)
    return chosen


def engine_for(engine: Engine, batch: int) -> Engine:
    """The engine that a batch of ``batch`` images given to ``engine`` runs on: for an
    ``AutoEngine`` the one measured fastest at that size, else ``engine`` itself."""
    pick = getattr(engine, "engine_for", None)
    return pick(batch) if pick is not None else engine


def best_batch(engine: Engine, default: int = DEFAULT_BATCH) -> int:
    """The batch size to fill for throughput: for an ``AutoEngine`` the largest measured
    size within 5 % of the highest images/s measured (``choice.Choice.best_batch``), else
    ``default``."""
    pick = getattr(engine, "best_batch", None)
    best = pick() if pick is not None else None
    return best if best else default


def record(engine: Engine | str) -> None:
    """Note that results of this process were computed with ``engine`` (see ``used``)."""
    text = engine if isinstance(engine, str) else engine.describe()
    if text not in _USED:
        _USED.append(text)


def used() -> str | None:
    """The engines behind this process's features and embeddings, for result headers
    (``imprinting.report.provenance``'s ``engine`` field); ``None`` before any."""
    return "; ".join(_USED) if _USED else None


__all__ = [
    "DEFAULT_BATCH",
    "ENGINES",
    "MEASURE_BATCHES",
    "PRECISIONS",
    "TOLERANCE",
    "AutoEngine",
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "TorchEngine",
    "available_engines",
    "best_batch",
    "default_engine",
    "default_precision",
    "engine_for",
    "engine_precisions",
    "frozen_engine",
    "in_training",
    "record",
    "resolve_precision",
    "select_engine",
    "set_default",
    "used",
    "walk",
]
