"""OpenVINO (PyPI ``openvino``) on the backbone's cached ONNX graph, on the CPU.

float32 is asked for explicitly (``INFERENCE_PRECISION_HINT=f32``): OpenVINO's own default
on CPUs with AMX is bf16. bfloat16 is offered only where the CPU reports ``BF16`` among its
``OPTIMIZATION_CAPABILITIES``.

A batch runs on single-threaded streams, one per CPU thread (``PERFORMANCE_HINT=THROUGHPUT``,
``NUM_STREAMS`` = threads): no thread waits for another at every layer, as the threads of one
request do (``benchmarks/engines.py``). The batch is cut into up to ``PARTS_PER_STREAM`` parts a
stream, all started at once, and each stream takes the next part as it finishes one: when
another thread of the process takes a core for a while (the service's HTTP work), the other
stream does the rest instead of waiting idle for its half (measured in docs/serve.md, "Load",
and docs/engines.md). A batch
with fewer images than streams (the service's single pictures) runs on a second model, compiled
for latency with every thread on its first such batch, so one image is not left to one core.
A sample's output does not depend on the part it falls in (the convolutions are per sample).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from imprinting.engines.base import Engine, EngineUnavailable, as_numpy, threads

HINTS = {"float32": "f32", "bfloat16": "bf16"}
PARTS_PER_STREAM = 4  # parts of a batch a stream, taken by whichever stream is free


def unavailable() -> str | None:
    """Why OpenVINO cannot run here, or ``None``."""
    try:  # optional: openvino (pip install 'imprinting[fast]')
        import openvino  # noqa: F401
    except ImportError:
        return "openvino is not installed: pip install 'imprinting[fast]'"
    try:  # optional: onnx (pip install 'imprinting[lite]')
        import onnx  # noqa: F401
    except ImportError:
        return "onnx is not installed (it writes the backbone's graph): pip install 'imprinting[lite]'"
    return None


@lru_cache(maxsize=1)
def _core():
    import openvino as ov  # optional: openvino (pip install 'imprinting[fast]')

    return ov.Core()


def cpu_capabilities() -> list[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES (e.g. FP32, INT8, BF16), [] without OpenVINO."""
    if unavailable():
        return []
    return [str(c) for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def supports_bf16() -> bool:
    return "BF16" in cpu_capabilities()


class OpenVinoEngine(Engine):
    """A compiled OpenVINO model over ``graph``, on the CPU, with PyTorch's thread count."""

    name = "openvino"

    def __init__(self, graph: str | Path, precision: str = "float32"):
        super().__init__(precision)
        reason = unavailable()
        if reason:
            raise EngineUnavailable(reason)
        if precision == "bfloat16" and not supports_bf16():
            raise EngineUnavailable("this CPU has no bf16 support (OpenVINO's OPTIMIZATION_CAPABILITIES: "
                                    f"{', '.join(cpu_capabilities())})")
        import openvino as ov  # optional: checked by unavailable() above

        self.graph, self.hint, self.streams = str(graph), HINTS[precision], threads()
        self.compiled = self._compile("THROUGHPUT", NUM_STREAMS=self.streams, INFERENCE_NUM_THREADS=self.streams)
        self.requests = [self.compiled.create_infer_request() for _ in range(self.streams)]
        self._try_once()
        self.small = None  # the latency-compiled model, made on the first small batch
        self.lock = threading.Lock()  # one batch at a time (the service has threads)
        self.version = ov.get_version().split("-")[0]

    def _compile(self, hint: str, **config):
        try:
            return _core().compile_model(self.graph, "CPU", {"INFERENCE_PRECISION_HINT": self.hint,
                                                             "PERFORMANCE_HINT": hint, **config})
        except Exception as exc:  # OpenVINO raises RuntimeError with its own message
            raise EngineUnavailable(f"openvino cannot compile {self.graph} ({type(exc).__name__}: {exc})") from None

    def _try_once(self) -> None:
        """One image of zeros through the compiled model. OpenVINO can compile a model it cannot
        run here: bf16 on a CPU that reports BF16, with oneDNN held below it
        (``ONEDNN_MAX_CPU_ISA=AVX2``), fails at the first inference ("Convolution node ... is
        not initialized"). Such an engine is unavailable when built (``auto`` goes on to the
        next), instead of failing the first batch it is given."""
        dims = list(self.compiled.input(0).get_partial_shape())[1:]
        if any(d.is_dynamic for d in dims):  # not a graph of ours: its first batch will tell
            return
        try:
            self.requests[0].infer({0: np.zeros([1, *(d.get_length() for d in dims)], dtype=np.float32)})
        except Exception as exc:  # OpenVINO raises RuntimeError with its own message
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]  # the last says what failed
            raise EngineUnavailable(f"openvino compiled the graph in {self.precision} but cannot run it on this "
                                    f"machine ({type(exc).__name__}: {lines[-1] if lines else ''})") from None

    def run(self, batch) -> torch.Tensor:
        x = as_numpy(batch)
        with self.lock:
            if 1 < self.streams and len(x) < self.streams:  # fewer images than streams: all threads on one
                if self.small is None:
                    self.small = self._compile("LATENCY", INFERENCE_NUM_THREADS=self.streams).create_infer_request()
                self.small.infer({0: x})
                out = np.array(self.small.get_output_tensor(0).data, dtype=np.float32, copy=True)
            else:
                started = []
                parts = min(len(x), self.streams * PARTS_PER_STREAM)
                while len(self.requests) < parts:
                    self.requests.append(self.compiled.create_infer_request())
                try:
                    for request, part in zip(self.requests, np.array_split(x, parts)):
                        if len(part):
                            request.start_async({0: part})
                            started.append(request)
                finally:
                    for request in started:  # none is left running, even after an error
                        request.wait()
                out = np.concatenate([np.array(r.get_output_tensor(0).data, dtype=np.float32, copy=True) for r in started])
        return torch.from_numpy(out).reshape(out.shape[0], -1)

    def details(self) -> str:
        return f"{self.version}, CPU, {self.streams} single-thread streams"
