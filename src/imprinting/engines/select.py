"""Which engines run here, and the fastest exact one, measured once per machine and weights.

``select_engine(module, preprocess)`` with ``engine="auto"`` builds every installed engine
on the backbone, runs each on a check batch, drops those whose float32 features differ from
PyTorch eager's by more than ``TOLERANCE`` (max abs), times a few batches of each and keeps
the fastest. Features are compared as unit-length vectors (the embeddings of a model
without an FC layer, what imprinting compares; the raw differences are recorded too: the
pooled features reach 6, where float32 rounding alone is a few 1e-6). The outcome is written to ``<cache>/engines/choices.json``, keyed by the
machine (CPU, threads, GPU, engine versions), the weights fingerprint, the input size and
the precision, so it is measured once. bf16 is never chosen unless asked for
(``precision="bfloat16"``): the exactness rule of the project keeps float32 the default
until a benchmark shows the paper's tables unchanged under bf16.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import torch
from torch import nn
from torch.nn.functional import normalize

from imprinting.engines import graph as graphs
from imprinting.engines import onnxruntime_engine, openvino_engine
from imprinting.engines.base import PRECISIONS, Engine, EngineError, EngineUnavailable, threads
from imprinting.engines.torch_engine import TorchEngine, module_device
from imprinting.files import atomic_write
from imprinting.machine import cpu_name
from imprinting.spec import fingerprint

ENGINES = ("torch", "onnxruntime", "openvino")
TOLERANCE = 1e-5  # max abs difference to PyTorch eager of L2-normalized float32 features
MEASURE_BATCH = 16
MEASURE_RUNS = 3
CHOICES = "choices.json"


def available_engines() -> dict[str, str | None]:
    """Engine name -> ``None`` when it can run here, else the reason it cannot."""
    return {"torch": None, "onnxruntime": onnxruntime_engine.unavailable(), "openvino": openvino_engine.unavailable()}


def engine_precisions(name: str) -> list[str]:
    """The precisions ``name`` runs in on this machine ([] when not installed)."""
    if available_engines().get(name):
        return []
    if name == "torch":  # bf16 autocast runs everywhere, but is slow without hardware support
        return ["float32", "bfloat16"] if torch.cuda.is_available() or cpu_bf16() else ["float32"]
    if name == "openvino":
        return ["float32", "bfloat16"] if openvino_engine.supports_bf16() else ["float32"]
    return ["float32"]


def cpu_bf16() -> bool:
    """Whether PyTorch's CPU kernels (oneDNN) have bf16 hardware support here."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _torch_device(module: nn.Module) -> torch.device:
    home = module_device(module)
    return torch.device("cuda") if home.type == "cpu" and torch.cuda.is_available() else home


def build_engine(name: str, module: nn.Module, input_shape: tuple[int, int, int], precision: str = "float32",
                 fp: str | None = None, cache=None) -> Engine:
    """Engine ``name`` on ``module`` for inputs (N, *input_shape); ``EngineUnavailable`` says why not."""
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose auto, {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if name == "torch":
        return TorchEngine(module, precision, _torch_device(module))
    reason = available_engines()[name]
    if reason:
        raise EngineUnavailable(f"{name}: {reason}")
    if name == "openvino" and precision == "bfloat16" and not openvino_engine.supports_bf16():
        raise EngineUnavailable("openvino: this CPU has no bf16 support")
    if module_device(module).type != "cpu":
        raise EngineUnavailable(f"{name} runs backbones on the CPU; this one is on {module_device(module)}")
    cls = onnxruntime_engine.OnnxRuntimeEngine if name == "onnxruntime" else openvino_engine.OpenVinoEngine
    path = graphs.onnx_graph(module, input_shape, fp, cache)
    try:
        return cls(path, precision)
    except EngineUnavailable:
        graphs.discard(path)  # a damaged graph file: written again, once
        return cls(graphs.onnx_graph(module, input_shape, fp, cache), precision)


def check_batch(preprocess, n: int = MEASURE_BATCH) -> torch.Tensor:
    """A fixed batch of images with pixels uniform in [0, 1], normalized as ``preprocess`` says."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, preprocess.in_chans, preprocess.image_size, preprocess.image_size, generator=g)
    mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


def embedding_difference(features: torch.Tensor, reference: torch.Tensor) -> float:
    """Max abs difference between the L2-normalized rows of two feature batches."""
    return float((normalize(features.float(), dim=1) - normalize(reference.float(), dim=1)).abs().max())


def machine_key() -> str:
    parts = [platform.machine(), cpu_name(), f"{os.cpu_count()} cores", f"{threads()} threads", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name())
    for name, reason in available_engines().items():
        if name != "torch" and reason is None:
            mod = __import__(name)
            parts.append(f"{name} {getattr(mod, '__version__', None) or mod.get_version()}")
    return ", ".join(parts)


def _timed(engine: Engine, x: torch.Tensor, runs: int = MEASURE_RUNS) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        engine.run(x)
        times.append(time.perf_counter() - t0)
    return len(x) / statistics.median(times)


def _load_choices(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: measured again
        return {}


def _save_choice(key: str, record: dict, cache=None) -> None:
    path = graphs.engines_dir(cache) / CHOICES
    path.parent.mkdir(parents=True, exist_ok=True)
    choices = _load_choices(path)
    choices[key] = record
    atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(choices, indent=1, sort_keys=True)))


def measure(module: nn.Module, preprocess, precision: str = "float32", fp: str | None = None, cache=None):
    """Build, check and time every installed engine. Returns ``(engines, record)``: the built
    engines by name and the JSON-able record of rates, differences and reasons."""
    fp = fp or fingerprint(module)
    shape = (preprocess.in_chans, preprocess.image_size, preprocess.image_size)
    x = check_batch(preprocess)
    reference = TorchEngine(module, "float32").run(x)
    built, rates, diffs, raw, reasons = {}, {}, {}, {}, {}
    for name, reason in available_engines().items():
        if reason is None and precision not in engine_precisions(name):
            reason = f"no {precision} on this machine"
        if reason:
            reasons[name] = reason
            continue
        try:
            engine = build_engine(name, module, shape, precision, fp, cache)
            out = engine.run(x)  # also the warm-up
        except EngineUnavailable as exc:
            reasons[name] = str(exc)
            continue
        diffs[name] = embedding_difference(out, reference)
        raw[name] = float((out - reference).abs().max())
        if precision == "float32" and not diffs[name] <= TOLERANCE:
            reasons[name] = f"embeddings differ from PyTorch eager's by {diffs[name]:.2g} (max abs) > {TOLERANCE:g}"
            continue
        built[name], rates[name] = engine, round(_timed(engine, x), 1)
    chosen = max(rates, key=rates.get) if rates else "torch"
    record = {"chosen": chosen, "images_per_s": rates, "embedding_max_abs_diff": diffs,
              "feature_max_abs_diff": raw, "not_eligible": reasons,
              "machine": machine_key(), "fingerprint": fp[:16], "input": list(shape), "precision": precision,
              "batch": len(x), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    return built, record


def select_engine(module: nn.Module, preprocess, engine: str = "auto", precision: str = "auto", cache=None) -> Engine:
    """The engine that runs the frozen ``module`` on images of ``preprocess``.

    ``engine``: ``"auto"`` (the fastest exact engine installed, measured once and
    remembered), or a name of ``ENGINES``. ``precision``: ``"auto"`` (float32),
    ``"float32"`` or ``"bfloat16"`` (only when asked for). A backbone without weights (a
    reshape) and one on a GPU run in PyTorch. ``cache``: the cache folder (default
    ``imprinting.cache.cache_dir()``), whose ``engines/`` keeps graphs and choices.
    """
    precision = "float32" if precision in (None, "auto") else precision
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if engine not in ("auto", *ENGINES):
        raise EngineError(f"unknown engine {engine!r}; choose auto, {', '.join(ENGINES)}")
    shape = (preprocess.in_chans, preprocess.image_size, preprocess.image_size)
    if engine == "torch" or not any(True for _ in module.parameters()) or module_device(module).type != "cpu":
        return TorchEngine(module, precision, _torch_device(module))
    fp = fingerprint(module)
    if engine != "auto":
        return build_engine(engine, module, shape, precision, fp, cache)
    key = " | ".join([machine_key(), fp, "x".join(map(str, shape)), precision])
    known = _load_choices(graphs.engines_dir(cache) / CHOICES).get(key)
    if known:
        try:
            return build_engine(known["chosen"], module, shape, precision, fp, cache)
        except EngineUnavailable:
            pass  # measured again below
    built, record = measure(module, preprocess, precision, fp, cache)
    _save_choice(key, record, cache)
    return built.get(record["chosen"]) or TorchEngine(module, precision, _torch_device(module))
