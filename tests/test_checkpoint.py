"""Checkpoints: bit-identical round trip, atomic writes, clear errors for bad files."""

import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from imprinting import checkpoint
from imprinting.checkpoint import CheckpointError
from imprinting.model import create_model


def _model():
    m = create_model("conv4", pretrained=False, dim=16, per_class_scale=True, unknown_threshold=0.3)
    for k in range(3):
        m.add_class(f"class {k}", torch.randn(2, 16))
    with torch.no_grad():
        m.classifier.scale.copy_(torch.tensor([4.0, 5.0, 6.0]))
    return m.eval()


def test_save_load_gives_bit_identical_outputs(tmp_path):
    m = _model()
    path = tmp_path / "m.safetensors"
    checkpoint.save(m, path)
    r = checkpoint.load(path)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(x), r(x))
    assert r.class_names == m.class_names and r.unknown_threshold == 0.3
    assert np.array_equal(r.classes.sums, m.classes.sums) and np.array_equal(r.classes.counts, m.classes.counts)
    assert r.config == m.config


def test_pretrained_backbone_round_trip(tmp_path):
    m = create_model("efficientnet_lite0", dim=None, image_size=64)
    m.add_class("a", torch.nn.functional.normalize(torch.randn(2, 1280), dim=1))
    path = tmp_path / "e.safetensors"
    checkpoint.save(m, path)
    r = checkpoint.load(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), r(x))
    assert r.preprocess.image_size == 64


def test_crash_during_save_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    checkpoint.save(_model(), path)
    original = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(create_model("conv4", pretrained=False), path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary file left behind


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint.save(_model(), path)
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 5):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="m.safetensors"):
            checkpoint.load(path)


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        checkpoint.load(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an imprinting model file"):
        checkpoint.load(foreign)
    with pytest.raises(CheckpointError, match="no such model file"):
        checkpoint.load(tmp_path / "missing.safetensors")


class _Boom:
    def __reduce__(self):
        return (open, (str(_Boom.marker), "w"))


def test_loading_never_unpickles(tmp_path):
    _Boom.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"x": _Boom()}, f)
    with pytest.raises(CheckpointError):
        checkpoint.load(evil)
    assert not _Boom.marker.exists()
