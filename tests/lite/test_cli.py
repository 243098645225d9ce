"""``imprint export``."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

import imprinting
from imprinting import checkpoint
from imprinting.cli import main
from imprinting.lite import load


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_export_command(conv4_model, tmp_path, tiny_images):
    model_path = tmp_path / "model.safetensors"
    checkpoint.save(conv4_model, model_path)
    out = tmp_path / "lite"
    folder = tiny_images["red"][0].parent
    result = _invoke("export", model_path, out, "--quantize", "--check-images", folder)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: conv4, 32-d embeddings, 3 classes" in result.output
    for name in ("embedder.onnx", "model.onnx", "classes.npz", "embedder.int8.onnx", "model.int8.onnx"):
        assert name in result.output and (out / name).is_file()
    assert "int8 vs float on 5 images: embedding cosine mean" in result.output
    assert "onnxruntime vs PyTorch, embedder max abs diff" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["measured_on"] == "5 images"

    # a second export into the same folder is refused, naming the danger
    result = _invoke("export", model_path, out)
    assert result.exit_code == 1 and "already holds an export" in result.output

    # a class taught on the device is not thrown away by --classes-only without --force
    lite = load(out)
    lite.imprint("device class", tiny_images["green"][:2])
    lite.save()
    result = _invoke("export", model_path, out, "--classes-only")
    assert result.exit_code == 1 and "1 classes that" in result.output and "'device class'" in result.output
    result = _invoke("export", model_path, out, "--classes-only", "--force")
    assert result.exit_code == 0 and "3 classes" in result.output
    assert load(out).class_names == ["base_a", "base_b", "blue"]


def test_classes_only_needs_the_same_embedder(conv4_export, tmp_path):
    other = imprinting.create_model("conv4", dim=32, pretrained=False)
    checkpoint.save(other, tmp_path / "other.safetensors")
    result = _invoke("export", tmp_path / "other.safetensors", conv4_export, "--classes-only")
    assert result.exit_code == 1 and "another embedder" in result.output


def test_export_errors_are_one_line(tmp_path):
    linear = imprinting.create_model("conv4", dim=None, pretrained=False, classifier="linear", num_classes=1)
    checkpoint.save(linear, tmp_path / "linear.safetensors")
    result = _invoke("export", tmp_path / "linear.safetensors", tmp_path / "out")
    assert result.exit_code == 1 and "Error: only models with the cosine classifier" in result.output
    result = _invoke("export", tmp_path / "missing.safetensors", tmp_path / "out")
    assert result.exit_code == 1 and "no such model file" in result.output
    assert not np.any([p.suffix == ".onnx" for p in tmp_path.rglob("*")])


def test_a_cli_class_extended_on_the_device_predicts_as_imprint_predict(tiny_images, tmp_path):
    """Teach with the CLI, export, add examples on the device with ``imprint(name, images)``;
    the same examples added with ``add-class --append``: both give the same top-1 (and the
    same cosines to 1e-4) on every image."""
    root = tiny_images["red"][0].parent.parent
    model_path, out = tmp_path / "m.safetensors", tmp_path / "lite"
    assert _invoke("create", model_path, "--image-size", 64, "--from-folder", root).exit_code == 0
    assert _invoke("export", model_path, out).exit_code == 0
    extra = tiny_images["blue"][3:] + tiny_images["green"][4:]
    lite = load(out)
    lite.imprint("red", extra)  # on the device
    result = _invoke("add-class", model_path, "--name", "red", "--append", *extra)
    assert result.exit_code == 0 and "red: 8 examples" in result.output
    images = [p for name in ("red", "green", "blue") for p in tiny_images[name]]
    result = _invoke("predict", model_path, *images, "--json", "-k", 3)
    cli = [json.loads(line) for line in result.output.splitlines()]
    device = lite.predict(images, k=3)
    assert [c["classes"][0] for c in cli] == [p.classes[0] for p in device]
    np.testing.assert_allclose([c["cosines"] for c in cli], [p.cosines for p in device], atol=1e-4)
    assert lite.classes.count("red") == 8 and lite.classes.sums.shape == (3, 1280)
