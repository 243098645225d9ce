"""Writing a PyTorch module as an ONNX graph: the one primitive the export (``imprinting.export``)
and the engines (``imprinting.engines.graph``, which caches a backbone's graph) both use. A leaf
module: it imports neither of them."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from imprinting.files import atomic_write

OPSET = 17


@contextlib.contextmanager
def quiet():
    """Silence the exporter's deprecation and tracer warnings and the quantizer's log lines."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def onnx_export(module: nn.Module, example: torch.Tensor, path: Path, output: str, metadata: dict,
                opset: int = OPSET) -> None:
    """Write ``module`` as an ONNX graph at ``path``, atomically: input ``image`` (N, C, H, W)
    with a dynamic batch, one output named ``output``, ``metadata`` in the graph's properties,
    checked by ``onnx.checker``. The module's training flags are as they were after."""
    import onnx  # optional: onnx (pip install 'imprinting[lite]')

    # torch.onnx.export puts the module back in the mode it found it in, recursively: a
    # wrapper left in training mode would switch the shared embedder to training mode too.
    modes = {m: m.training for m in module.modules()}
    module.eval()

    def write(tmp: str) -> None:
        with quiet(), torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                tmp,
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=[output],
                dynamic_axes={"image": {0: "batch"}, output: {0: "batch"}},
                do_constant_folding=True,
            )
        graph = onnx.load(tmp)
        for key, value in metadata.items():
            graph.metadata_props.add(key=key, value=value)
        graph.producer_name = "imprinting"
        onnx.checker.check_model(graph)
        onnx.save(graph, tmp)

    try:
        atomic_write(path, write)
    finally:
        for m, training in modes.items():
            m.training = training
