"""The ONNX graph of a backbone, written once per weights fingerprint and input size.

Graphs live in ``<cache>/engines/`` (``imprinting.cache.cache_dir``), named by the
fingerprint of the weights (``imprinting.spec.fingerprint``) and the input size, written
atomically (``imprinting.files.atomic_write``, by the export's own writer) and reused by
every later process. The graph takes ``image`` (N, C, H, W) with a dynamic batch and gives
``features`` (N, F).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from imprinting.cache import cache_dir
from imprinting.engines.base import EngineUnavailable
from imprinting.onnx_io import OPSET, onnx_export
from imprinting.spec import fingerprint


def engines_dir(cache=None) -> Path:
    return cache_dir(cache) / "engines"


def graph_path(fp: str, input_shape: tuple[int, int, int], cache=None) -> Path:
    return engines_dir(cache) / f"backbone-{fp[:32]}-{'x'.join(map(str, input_shape))}.onnx"


def onnx_graph(module: nn.Module, input_shape: tuple[int, int, int], fp: str | None = None, cache=None) -> Path:
    """The cached graph of ``module`` for inputs (N, *input_shape); written when missing.

    Raises ``EngineUnavailable`` when ``onnx`` is not installed or the module cannot be
    written as ONNX.
    """
    fp = fp or fingerprint(module)
    path = graph_path(fp, input_shape, cache)
    if path.is_file():
        return path
    try:  # optional: onnx (pip install 'imprinting[lite]')
        import onnx  # noqa: F401  (the export checks the graph with it)
    except ImportError:
        raise EngineUnavailable("the ONNX graph needs the onnx package: pip install 'imprinting[lite]'") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, *input_shape)
    meta = {"imprinting_fingerprint": fp, "imprinting_input": json.dumps(list(input_shape))}
    try:
        onnx_export(module, example, path, "features", meta, OPSET)
    except EngineUnavailable:
        raise
    except Exception as exc:  # the exporter raises many types for unsupported modules
        raise EngineUnavailable(f"the backbone cannot be written as ONNX ({type(exc).__name__}: {exc})") from None
    return path


def discard(path: Path) -> None:
    """Remove a cached graph that an engine could not load (it is written again next time)."""
    Path(path).unlink(missing_ok=True)
