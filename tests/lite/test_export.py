"""The ONNX export (PyTorch side): files, and onnxruntime agreeing with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import imprinting
from imprinting.data.transforms import eval_transform
from imprinting.export import ExportError, embedder_id, export
from imprinting.lite import format as fmt
from imprinting.lite import load

TOL = 1e-4  # the bound on |onnxruntime - PyTorch|


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch_batch(model, files):
    tf = eval_transform(model.preprocess)
    return torch.stack([tf(img) for img in model.load_images(files)])


def _check_agreement(model, folder, files):
    """Embeddings and logits: onnxruntime (graphs and lite runtime) vs PyTorch on ``files``."""
    x = _torch_batch(model, files)  # torchvision's eval transform, as model.embed_images
    with torch.no_grad():
        emb_t = model.embed(x)
        logits_t = model.classifier(emb_t).numpy()  # == model(x)
        emb_t = emb_t.numpy()
    emb_o = _session(folder / "embedder.onnx").run(None, {"image": x.numpy()})[0]
    logits_o = _session(folder / "model.onnx").run(None, {"image": x.numpy()})[0]
    assert emb_o.shape == emb_t.shape and logits_o.shape == logits_t.shape == (len(files), model.num_classes)
    assert np.abs(emb_o - emb_t).max() < TOL
    assert np.abs(logits_o - logits_t).max() < TOL
    # end to end from the files: lite preprocessing + onnxruntime vs torchvision + PyTorch
    lite = load(folder)
    emb_l = lite.embed(files)
    assert np.abs(emb_l - emb_t).max() < TOL
    assert np.abs(lite.logits(emb_l) - logits_t).max() < TOL
    np.testing.assert_allclose(np.linalg.norm(emb_l, axis=1), 1.0, atol=1e-5)


@pytest.mark.real_data
def test_effnet_onnx_matches_pytorch_on_real_images(effnet_model, effnet_export, real_images):
    _check_agreement(effnet_model, effnet_export, real_images)


@pytest.mark.real_data
def test_conv4_onnx_matches_pytorch_on_real_images(conv4_model, conv4_export, real_images):
    _check_agreement(conv4_model, conv4_export, real_images)


def test_onnx_matches_pytorch_on_generated_images(effnet_model, effnet_export, conv4_model, conv4_export, tiny_images):
    files = [p for group in tiny_images.values() for p in group]
    _check_agreement(effnet_model, effnet_export, files)
    _check_agreement(conv4_model, conv4_export, files)


def test_export_folder_contents(effnet_model, effnet_export):
    names = {p.name for p in effnet_export.iterdir()}
    assert names == {"manifest.json", "preprocess.json", "embedder.onnx", "model.onnx", "classes.npz"}
    manifest = fmt.read_manifest(effnet_export)
    assert manifest["embedding_dim"] == 1280 and manifest["backbone"] == "efficientnet_lite0"
    assert manifest["embedder_id"] == embedder_id(effnet_model)
    assert manifest["input"]["shape"] == ["batch", 3, 96, 96]
    assert all(v < TOL for v in manifest["verify"].values()) and manifest["quantization"] is None
    assert manifest["sizes"]["embedder"] == (effnet_export / "embedder.onnx").stat().st_size
    assert fmt.read_preprocess(effnet_export) == {**effnet_model.preprocess.to_dict(), "mean": [0.5] * 3, "std": [0.5] * 3}
    graph = onnx.load(str(effnet_export / "model.onnx"))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version >= 17
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["class_names"]) == ["red", "green"]
    assert json.loads(meta["preprocess"]) == effnet_model.preprocess.to_dict()
    # the classes are not in the embedder graph: it has no class-sized output
    emb = _session(effnet_export / "embedder.onnx")
    assert emb.get_outputs()[0].shape == ["batch", 1280]


def test_dynamic_batch(conv4_export):
    sess = _session(conv4_export / "embedder.onnx")
    for n in (1, 7):
        x = np.random.default_rng(n).standard_normal((n, 1, 28, 28)).astype(np.float32)
        assert sess.run(None, {"image": x})[0].shape == (n, 32)


def test_export_leaves_the_model_untouched(tmp_path):
    model = imprinting.create_model("conv4", dim=16, pretrained=False, class_names=["a"]).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export(model, tmp_path / "out")
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics included


def test_quantized_export(conv4_model, conv4_export):
    manifest = fmt.read_manifest(conv4_export)
    assert {"embedder_int8", "model_int8"} <= set(manifest["files"])
    q = manifest["quantization"]
    assert "random-noise" in q["measured_on"] and 0.5 < q["embedding_cosine_mean"] <= 1.0 + 1e-6
    assert 0.0 <= q["top1_agreement"] <= 1.0
    graph = onnx.load(str(conv4_export / "embedder.int8.onnx"))
    assert any(n.op_type in ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear") for n in graph.graph.node)
    lite = load(conv4_export, quantized=True)
    assert lite.quantized and lite.embed_array(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 32)
    with pytest.raises(fmt.ExportFormatError, match="no such export folder"):
        load(conv4_export.parent / "does-not-exist", quantized=True)


def test_quantization_measured_on_images(tmp_path, conv4_model, tiny_images):
    files = [p for group in tiny_images.values() for p in group]
    manifest = export(conv4_model, tmp_path / "q", quantize=True, check_images=files)
    q = manifest["quantization"]
    assert q["measured_on"] == f"{len(files)} images"
    assert q["embedding_cosine_min"] <= q["embedding_cosine_mean"] <= 1.0 + 1e-6


def test_float_only_export_has_no_int8_graph(effnet_export):
    with pytest.raises(fmt.ExportFormatError, match=r"has no int8 embedder \(export with --quantize\)"):
        load(effnet_export, quantized=True)


def test_existing_export_is_not_overwritten(tmp_path, conv4_model):
    out = tmp_path / "out"
    export(conv4_model, out)
    with pytest.raises(ExportError, match="already holds an export"):
        export(conv4_model, out)
    (out / "model.int8.onnx").write_bytes(b"stale")
    manifest = export(conv4_model, out, overwrite=True)
    assert not (out / "model.int8.onnx").exists() and manifest["classes_at_export"] == 3


def test_model_without_classes_exports_the_embedder_only(tmp_path):
    model = imprinting.create_model("conv4", dim=None, pretrained=False)
    manifest = export(model, tmp_path / "empty")
    assert "model" not in manifest["files"] and not (tmp_path / "empty" / "model.onnx").exists()
    lite = load(tmp_path / "empty")
    assert lite.num_classes == 0
    with pytest.raises(ValueError, match="no classes yet"):
        lite.predict_embeddings(np.ones((1, 64), np.float32) / 8)


def test_only_cosine_normalized_models_export(tmp_path):
    linear = imprinting.create_model("conv4", dim=None, pretrained=False, classifier="linear", num_classes=2)
    with pytest.raises(ExportError, match="cosine classifier"):
        export(linear, tmp_path / "x")
    with pytest.raises(ExportError, match="opset"):
        export(imprinting.create_model("conv4", pretrained=False), tmp_path / "y", opset=11)
