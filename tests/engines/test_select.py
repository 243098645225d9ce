"""Automatic selection: exact engines only, measured once, graphs written once, reasons given."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from imprinting import engines
from imprinting.backbones import create_backbone
from imprinting.engines import EngineUnavailable, TorchEngine, available_engines, select_engine
from imprinting.engines import graph as graphs
from imprinting.engines import measure, runtimes, select


@pytest.fixture
def conv4():
    bb = create_backbone("conv4", pretrained=False)
    bb.module.eval()  # frozen: a module in training mode gets PyTorch (test_training.py)
    return bb


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPRINTING_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class Noisy(TorchEngine):
    """PyTorch plus an error of 1e-3: an engine that is fast but not exact."""

    name = "onnxruntime"

    def run(self, batch):
        return super().run(batch) + 1e-3


def test_auto_never_picks_an_inexact_engine_however_fast(conv4, cache, monkeypatch):
    real_build = runtimes.build_engine

    def build(name, module, shape, precision="float32", fp=None, cache=None):
        if name == "onnxruntime":
            return Noisy(module, precision)
        if name == "openvino":
            raise EngineUnavailable("openvino: not installed here (test)")
        return real_build(name, module, shape, precision, fp, cache)

    monkeypatch.setattr(runtimes, "build_engine", build)
    monkeypatch.setattr(runtimes, "available_engines", lambda: {"torch": None, "onnxruntime": None, "openvino": None})
    monkeypatch.setattr(measure, "_rate", lambda engine, x: 1e6 if isinstance(engine, Noisy) else 1.0)
    chosen = select_engine(conv4.module, conv4.preprocess)
    assert chosen.name == "torch" and not isinstance(chosen, Noisy)
    assert all(type(chosen.engine_for(b)) is TorchEngine for b in (1, 4, 16, 32, 100))
    (record,) = json.loads((cache / "engines" / select.CHOICES).read_text()).values()
    assert record["chosen"] == "torch" and set(record["chosen_by_batch"].values()) == {"torch"}
    assert all("onnxruntime" not in rates for rates in record["images_per_s_by_batch"].values())
    assert "differ from PyTorch eager" in record["not_eligible"]["onnxruntime"]
    assert "not installed" in record["not_eligible"]["openvino"]


def test_bf16_is_never_chosen_by_default(conv4, cache, monkeypatch):
    """Even where every engine claims bf16 and a bf16 engine would be timed fastest, the
    default choice runs float32: its features are PyTorch eager's float32 ones (bf16 keeps
    about 3 significant digits, far outside 1e-5), and it is the fastest of the float32
    engines the selection measured and recorded."""
    monkeypatch.delenv("IMPRINTING_PRECISION", raising=False)
    monkeypatch.setattr(runtimes, "engine_precisions", lambda name: ["float32", "bfloat16"])
    real_rate = measure._rate
    monkeypatch.setattr(measure, "_rate", lambda engine, x: 1e9 if engine.precision != "float32" else real_rate(engine, x))
    chosen = select_engine(conv4.module, conv4.preprocess)
    pre = conv4.preprocess
    x = torch.randn(5, pre.in_chans, pre.image_size, pre.image_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = torch.nn.functional.normalize(conv4.module(x).float(), dim=1)
    out = chosen.run(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(torch.nn.functional.normalize(out.float(), dim=1), reference, atol=1e-5, rtol=0)
    ((key, record),) = json.loads((cache / "engines" / select.CHOICES).read_text()).items()
    assert key.endswith("| float32") and record["precision"] == "float32"
    for batch, rates in record["images_per_s_by_batch"].items():
        assert rates and all(r < 1e9 for r in rates.values())  # no bf16 engine was ever timed
        assert record["chosen_by_batch"][batch] == max(rates, key=rates.get)  # the fastest measured one
        assert all(record["embedding_max_abs_diff"][name] <= 1e-5 for name in rates)
    assert chosen.name == record["chosen"] == record["chosen_by_batch"]["32"]
    assert engines.resolve_precision("auto") == engines.resolve_precision(None) == "float32"


@pytest.mark.skipif(available_engines()["onnxruntime"] is not None, reason=str(available_engines()["onnxruntime"]))
def test_the_graph_is_written_once_per_weights_and_the_choice_measured_once(conv4, cache, monkeypatch):
    import imprinting.engines.graph as graph

    writes, measures = [], []
    real_export, real_measure = graph.onnx_export, select.measure
    monkeypatch.setattr(graph, "onnx_export", lambda *a, **k: (writes.append(a[2]), real_export(*a, **k)))
    monkeypatch.setattr(select, "measure", lambda *a, **k: (measures.append(1), real_measure(*a, **k))[1])
    shape = (1, 28, 28)
    first = runtimes.build_engine("onnxruntime", conv4.module, shape)
    again = runtimes.build_engine("onnxruntime", conv4.module, shape)
    assert len(writes) == 1 and writes[0].parent == cache / "engines" and writes[0].is_file()
    x = torch.randn(3, *shape)
    torch.testing.assert_close(first.run(x), again.run(x), rtol=0, atol=0)
    select_engine(conv4.module, conv4.preprocess)
    select_engine(conv4.module, conv4.preprocess)  # the recorded choice: not measured again
    assert len(measures) == 1 and len(writes) == 1
    with torch.no_grad():
        conv4.module.features[0].weight.add_(0.01)  # other weights: another graph
    runtimes.build_engine("onnxruntime", conv4.module, shape)
    assert len(writes) == 2


def test_the_in_process_engine_follows_weight_changes(conv4, cache):
    a = engines.frozen_engine(conv4.module, conv4.preprocess, "torch")
    assert engines.frozen_engine(conv4.module, conv4.preprocess, "torch") is a
    with torch.no_grad():
        next(conv4.module.parameters()).mul_(2)
    b = engines.frozen_engine(conv4.module, conv4.preprocess, "torch")
    assert b is not a
    bn = next(m for m in conv4.module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.add_(1.0)  # a buffer changed in place
    c = engines.frozen_engine(conv4.module, conv4.preprocess, "torch")
    assert c is not b
    bn.weight = torch.nn.Parameter(bn.weight.detach().clone())  # a new tensor, the same values
    d = engines.frozen_engine(conv4.module, conv4.preprocess, "torch")
    assert d is not c
    conv4.module.extra = torch.nn.Linear(2, 2)  # a module added (its weights are new state)
    assert engines.frozen_engine(conv4.module, conv4.preprocess, "torch") is not d


def test_an_engine_that_is_not_installed_says_why(conv4, cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    reason = available_engines()["openvino"]
    assert "openvino is not installed" in reason and "pip install" in reason
    with pytest.raises(EngineUnavailable, match="openvino is not installed"):
        runtimes.build_engine("openvino", conv4.module, (1, 28, 28))
    assert engines.engine_precisions("openvino") == []
    assert select_engine(conv4.module, conv4.preprocess).name != "openvino"  # auto skips it
    with pytest.raises(engines.EngineError, match="unknown engine"):
        select_engine(conv4.module, conv4.preprocess, "tensorrt")


class _FailsToRun:
    """A compiled OpenVINO model whose inference fails, as OpenVINO's bf16 kernels do with
    oneDNN held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``) on a CPU that reports BF16."""

    def __init__(self, compiled):
        self.compiled = compiled

    def input(self, index):
        return self.compiled.input(index)

    def create_infer_request(self):
        return self

    def infer(self, inputs):
        raise RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp:224:\n"
                           "[CPU] Convolution node with name 'stem' object is not initialized\n")


def test_an_engine_that_compiles_but_cannot_run_is_unavailable_when_built(conv4, cache, monkeypatch):
    if available_engines()["openvino"]:
        pytest.skip(available_engines()["openvino"])
    from imprinting.engines.openvino_engine import OpenVinoEngine

    compile_ = OpenVinoEngine._compile
    monkeypatch.setattr(OpenVinoEngine, "_compile", lambda self, *a, **k: _FailsToRun(compile_(self, *a, **k)))
    with pytest.raises(EngineUnavailable, match=r"cannot run it on this machine \(RuntimeError: \[CPU\] "
                                                r"Convolution node with name 'stem' object is not initialized\)"):
        runtimes.build_engine("openvino", conv4.module, (1, 28, 28))
    assert select_engine(conv4.module, conv4.preprocess).name != "openvino"  # auto goes on to the next


def test_a_backbone_without_weights_runs_in_pytorch(cache):
    flat = torch.nn.Flatten()
    pre = create_backbone("conv4", pretrained=False).preprocess
    assert isinstance(select_engine(flat, pre), TorchEngine)
    assert not graphs.engines_dir().exists()  # nothing exported, nothing measured
