"""Classes travel both ways: device (lite) -> PyTorch -> device, and PyTorch -> device."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

import imprinting
from imprinting import checkpoint
from imprinting.export import embedder_id, export_classes, import_classes
from imprinting.lite import ExportFormatError, load, load_classes, save_classes


def _same_classes(lite, model):
    assert lite.class_names == model.class_names
    np.testing.assert_array_equal(lite.weights, model.classifier.weight.detach().numpy())
    np.testing.assert_array_equal(lite.scale, model.classifier.scale.detach().numpy())
    np.testing.assert_array_equal(lite.sums, model.classes.sums)
    np.testing.assert_array_equal(lite.counts, model.classes.counts)
    assert lite.unknown_threshold == model.unknown_threshold


def test_device_to_pytorch_to_device(conv4_model, conv4_export, tmp_path, tiny_images):
    device_dir = tmp_path / "device"
    shutil.copytree(conv4_export, device_dir)
    # on the device: teach two classes, one in two sittings, and save
    lite = load(device_dir)
    lite.imprint("red", tiny_images["red"][:2])
    lite.imprint("green", tiny_images["green"])
    lite.imprint("red", tiny_images["red"][2:])
    lite.unknown_threshold = 0.25
    lite.save()

    # back on the server: a fresh copy of the PyTorch model, through a checkpoint file
    checkpoint.save(conv4_model, tmp_path / "model.safetensors")
    model = checkpoint.load(tmp_path / "model.safetensors")
    import_classes(model, device_dir)
    _same_classes(lite, model)
    files = [p for group in tiny_images.values() for p in group]
    torch_preds = model.predict_images(files, k=3)
    lite_preds = lite.predict(files, k=3)
    assert [p.classes for p in torch_preds] == [p.classes for p in lite_preds]
    assert [p.unknown for p in torch_preds] == [p.unknown for p in lite_preds]

    # the server keeps teaching the device's class where the device left off ...
    more = torch.from_numpy(lite.embed(tiny_images["blue"][:1]))
    model.add_examples("red", more)
    lite.imprint_embeddings("red", more.numpy())
    np.testing.assert_allclose(model.classes.sums[model.index_of("red")], lite.sums[lite.index_of("red")],
                               rtol=0, atol=1e-12)
    assert int(model.classes.counts[model.index_of("red")]) == 6
    # ... and a checkpoint keeps the imported classes, sums included
    checkpoint.save(model, tmp_path / "model2.safetensors")
    model2 = checkpoint.load(tmp_path / "model2.safetensors")

    # and back to the device, bit for bit
    export_classes(model2, device_dir)
    again = load(device_dir)
    _same_classes(again, model2)
    assert again.class_names == ["base_a", "base_b", "blue", "red", "green"]


def test_pytorch_to_device_keeps_base_and_imprinted_classes(conv4_model, conv4_export):
    lite = load(conv4_export)
    _same_classes(lite, conv4_model)
    assert lite.counts.tolist() == [0, 0, 2]  # two trained base classes, one imprinted
    assert lite.embedder_id == embedder_id(conv4_model)


def test_import_into_a_shared_scale_model(conv4_export, tmp_path):
    """A per-class-scale file into a model with one shared scale: fine while the scales agree."""
    data = load_classes(conv4_export)
    model = imprinting.create_model("conv4", dim=32, pretrained=False)
    with pytest.raises(ExportFormatError, match="one scale per class"):
        import_classes(model, conv4_export, check_embedder=False)
    data.scale[:] = 9.0
    save_classes(data, tmp_path / "same.npz")
    import_classes(model, tmp_path / "same.npz", check_embedder=False)
    assert model.classifier.scale.tolist() == [9.0] and model.num_classes == 3


def test_import_refuses_another_embedder(conv4_export):
    other = imprinting.create_model("conv4", dim=32, pretrained=False, per_class_scale=True)  # other random weights
    with pytest.raises(ExportFormatError, match="another embedder"):
        import_classes(other, conv4_export)
    import_classes(other, conv4_export, check_embedder=False)  # on purpose
    assert other.class_names == ["base_a", "base_b", "blue"]
    wrong_dim = imprinting.create_model("conv4", dim=16, pretrained=False)
    with pytest.raises(ExportFormatError, match="32-d classes for a model with 16-d"):
        import_classes(wrong_dim, conv4_export)


def test_imported_classes_behave_like_imprinted_ones(conv4_model, conv4_export, tiny_images):
    model = copy.deepcopy(conv4_model)
    model.remove_class("blue")
    import_classes(model, conv4_export)
    assert model.is_imprinted("blue") and not model.is_imprinted("base_a")
    model.remove_class("blue")  # imprinted classes can be removed, base classes stay
    assert model.class_names == ["base_a", "base_b"]
    model.imprint("blue", tiny_images["blue"][:2])
    np.testing.assert_allclose(model.classifier.weight.detach().numpy()[2], load(conv4_export).weights[2], atol=1e-6)
