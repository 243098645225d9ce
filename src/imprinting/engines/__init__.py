"""Engines: every frozen forward pass of a backbone on the fastest exact runtime installed.

  base.py                Engine (``run(batch) -> features``, ``name``, ``precision``, ``describe()``)
  torch_engine.py        PyTorch eager, channels_last; CUDA (TF32 off, or bf16 autocast) on a GPU
  onnxruntime_engine.py  onnxruntime, float32
  openvino_engine.py     OpenVINO, float32 (bf16 where the CPU reports BF16)
  graph.py               the backbone's ONNX graph, cached per weights fingerprint and input size
  select.py              available_engines, select_engine (measured once, exact ones only)
  pipeline.py            decoding in threads, in parallel with the engine

Used by the feature cache (``imprinting.data.features``) and ``ImprintModel.embed_images``
(hence imprint, predict, the CLI and the service). Training never goes through an engine.

The engine name ``None`` means the process default: ``set_default`` (the CLI's
``--engine``), else ``$IMPRINTING_ENGINE``, else ``"auto"``; the same for precision.
"""

from __future__ import annotations

import os
import weakref

from torch import nn

from imprinting.engines.base import PRECISIONS, Engine, EngineError, EngineUnavailable
from imprinting.engines.select import ENGINES, TOLERANCE, available_engines, engine_precisions, select_engine
from imprinting.engines.torch_engine import TorchEngine

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


def _state(module: nn.Module) -> tuple:
    """Changes whenever a weight does (in-place updates bump ``_version``; new tensors a pointer)."""
    return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


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
    "ENGINES",
    "PRECISIONS",
    "TOLERANCE",
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "TorchEngine",
    "available_engines",
    "default_engine",
    "default_precision",
    "engine_precisions",
    "frozen_engine",
    "record",
    "resolve_precision",
    "select_engine",
    "set_default",
    "used",
]
