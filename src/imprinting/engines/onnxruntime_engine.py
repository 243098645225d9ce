"""onnxruntime (CPU execution provider) on the backbone's cached ONNX graph, float32.

Its threads spin between the operators of a run (fast), but stop spinning as soon as the run
returns (``session.force_spinning_stop``): by default they go on spinning for a while after
it, taking the cores from whatever comes next: the decoders of the pipeline's next batch, or
the engine timed after it when the engines are measured (``benchmarks/engines.py``, 2 cores,
2026-12-07: decoding 32 photos right after a batch took 1.28-1.44 ms a photo with the threads
left spinning, 0.90 with them stopped; OpenVINO at batch 16 right after it ran at 220-226
images/s, 344-358 with them stopped).
"""

from __future__ import annotations

from pathlib import Path

import torch

from imprinting.engines.base import Engine, EngineUnavailable, as_numpy, threads


def unavailable() -> str | None:
    """Why onnxruntime cannot run here, or ``None``."""
    try:  # optional: onnxruntime (pip install 'imprinting[lite]')
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed: pip install 'imprinting[lite]'"
    try:  # optional: onnx (pip install 'imprinting[lite]')
        import onnx  # noqa: F401
    except ImportError:
        return "onnx is not installed (it writes the backbone's graph): pip install 'imprinting[lite]'"
    return None


class OnnxRuntimeEngine(Engine):
    """An onnxruntime session over ``graph`` with PyTorch's thread count (float32 only)."""

    name = "onnxruntime"

    def __init__(self, graph: str | Path, precision: str = "float32", stop_spinning: bool = True):
        super().__init__(precision)
        reason = unavailable()
        if reason:
            raise EngineUnavailable(reason)
        if precision != "float32":
            raise EngineUnavailable("onnxruntime runs float32 only here (its CPU provider has no bf16 kernels)")
        import onnxruntime as ort  # optional: checked by unavailable() above

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if stop_spinning:  # False: onnxruntime's default, for benchmarks/engines.py's comparison
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self.session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types
            raise EngineUnavailable(f"onnxruntime cannot load {graph} ({type(exc).__name__}: {exc})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.version = ort.__version__

    def run(self, batch) -> torch.Tensor:
        out = self.session.run([self.output_name], {self.input_name: as_numpy(batch)})[0]
        return torch.from_numpy(out).reshape(out.shape[0], -1)

    def details(self) -> str:
        return f"{self.version}, CPUExecutionProvider, {threads()} threads"
