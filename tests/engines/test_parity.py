"""Each installed engine against PyTorch eager on real images (EfficientNet-Lite0, 96 px)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imprinting.backbones import create_backbone
from imprinting.data.images import load_image
from imprinting.data.transforms import eval_transform
from imprinting.engines import TOLERANCE, available_engines, engine_precisions
from imprinting.engines.select import build_engine

SIZE = 96


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("efficientnet_lite0", pretrained=True)


@pytest.fixture(scope="module")
def batch(backbone, flowers_jpegs, cub_jpegs):
    tf = eval_transform(backbone.preprocess.at_size(SIZE))
    return torch.stack([tf(load_image(p)) for p in flowers_jpegs[:8] + cub_jpegs[:4]])


@pytest.fixture(scope="module")
def reference(backbone, batch):
    """PyTorch eager as the library ran it before engines: NCHW, no_grad."""
    with torch.no_grad():
        return backbone.module.eval()(batch)


def _installed(name: str) -> None:
    reason = available_engines()[name]
    if reason:
        pytest.skip(f"{name}: {reason}")


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["torch", "onnxruntime", "openvino"])
def test_float32_engine_matches_pytorch_eager_on_real_images(name, backbone, batch, reference):
    _installed(name)
    engine = build_engine(name, backbone.module, (3, SIZE, SIZE))
    out = engine.run(batch.numpy())  # numpy in, torch out
    assert out.dtype == torch.float32 and out.shape == reference.shape == (len(batch), backbone.feature_dim)
    assert engine.precision == "float32" and engine.name == name and name in engine.describe()
    emb = (F.normalize(out, dim=1) - F.normalize(reference, dim=1)).abs().max().item()
    assert emb <= TOLERANCE, f"{name}: embeddings differ by {emb:.2g}"
    # The pooled features themselves (up to 6, ReLU6) agree to float32 rounding: a few 1e-5 at most.
    assert (out - reference).abs().max().item() <= 5e-5


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["torch", "openvino"])
def test_bf16_engine_is_close_but_is_its_own_precision(name, backbone, batch, reference):
    _installed(name)
    if "bfloat16" not in engine_precisions(name):
        pytest.skip(f"{name}: no bf16 hardware here (a GPU, or a CPU that reports BF16)")
    batch, reference = batch[:4], reference[:4]
    engine = build_engine(name, backbone.module, (3, SIZE, SIZE), "bfloat16")
    cos = F.cosine_similarity(engine.run(batch), reference, dim=1)
    assert not engine.exact and engine.precision == "bfloat16"
    assert cos.min().item() > 0.99


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["torch", "onnxruntime", "openvino"])
def test_an_image_gets_the_same_features_in_any_batch(name, backbone, batch, reference):
    """One image at a time, odd-sized batches and the whole batch agree with PyTorch eager
    (OpenVINO splits a batch over single-thread streams, and runs small batches on a
    latency-compiled model)."""
    _installed(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # OpenVINO: 2 streams whatever the machine, so both of its paths run
    try:
        engine = build_engine(name, backbone.module, (3, SIZE, SIZE))
        whole = engine.run(batch)
        pieces = torch.cat([engine.run(batch[i : i + k]) for i, k in ((0, 1), (1, 5), (6, 3), (9, 3))])
    finally:
        torch.set_num_threads(threads)
    assert pieces.shape == whole.shape == reference.shape
    assert (pieces - reference).abs().max().item() <= 5e-5
    assert (whole - pieces).abs().max().item() <= 5e-5
    if name == "openvino":  # the single image ran on the latency model, the rest split over 2 streams
        assert engine.streams == 2 and engine.small is not None
