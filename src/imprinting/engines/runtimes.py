"""Which engines run here, in which precisions, and building one on a backbone.

``available_engines()`` says for each engine of ``ENGINES`` whether it can run here (else
why not); ``build_engine(name, module, input_shape)`` makes it, writing the backbone's ONNX
graph once (``graph.py``) for the engines that take one; ``machine_key()`` names what a
measurement depends on (CPU, threads, GPU, engine versions).
"""

from __future__ import annotations

import os
import platform

import torch
from torch import nn

from imprinting.engines import graph as graphs
from imprinting.engines import onnxruntime_engine, openvino_engine
from imprinting.engines.base import PRECISIONS, Engine, EngineError, EngineUnavailable, threads
from imprinting.engines.torch_engine import TorchEngine, module_device
from imprinting.machine import cpu_name

ENGINES = ("torch", "onnxruntime", "openvino")


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


def torch_device(module: nn.Module) -> torch.device:
    """Where PyTorch runs ``module`` as an engine: a GPU when there is one, else its own device."""
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
        return TorchEngine(module, precision, torch_device(module))
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


def machine_key() -> str:
    """What a measured choice depends on: CPU, cores, threads, GPU, the engines' versions."""
    parts = [platform.machine(), cpu_name(), f"{os.cpu_count()} cores", f"{threads()} threads", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name())
    for name, reason in available_engines().items():
        if name != "torch" and reason is None:
            mod = __import__(name)
            parts.append(f"{name} {getattr(mod, '__version__', None) or mod.get_version()}")
    return ", ".join(parts)
