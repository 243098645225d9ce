"""Checkpoints: bit-identical round trip, atomic writes, clear errors for bad files."""

import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from imprinting import checkpoint
from imprinting.build import create_model
from imprinting.checkpoint import CheckpointError


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


def _flip(path, offset: int, n: int = 1) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))


def test_a_flipped_byte_anywhere_in_the_tensors_is_a_clear_error(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint.save(_model(), path)
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    for offset in (header, (header + len(data)) // 2, len(data) - 1):
        path.write_bytes(data)
        _flip(path, offset)
        with pytest.raises(CheckpointError, match="m.safetensors: corrupt model file.*checksum"):
            checkpoint.load(path)
    path.write_bytes(data)
    with open(path, "r+b") as f:  # 4 KB of random bytes in the middle, as found in the attack
        f.seek(len(data) // 2)
        f.write(os.urandom(min(4096, len(data) - len(data) // 2)))
    with pytest.raises(CheckpointError, match="corrupt model file"):
        checkpoint.load(path)


def test_files_without_a_checksum_still_load(tmp_path):
    """A file as versions before the checksum wrote it: the same header without 'sha256'."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    m = _model()
    path = tmp_path / "m.safetensors"
    checkpoint.save(m, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert len(meta.pop("sha256")) == 64
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata=meta)
    r = checkpoint.load(old)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(x), r(x))


def test_nan_or_infinite_weights_are_refused_at_save_and_load(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    m = _model()
    path = tmp_path / "m.safetensors"
    checkpoint.save(m, path)
    with torch.no_grad():
        next(p for p in m.parameters() if p.is_floating_point()).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="not saved.*NaN or infinite"):
        checkpoint.save(m, tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()
    tensors = load_file(str(path))
    tensors["sums"][0, 0] = float("inf")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta.pop("sha256")  # a file without a checksum: the NaN check still refuses it
    save_file(tensors, str(tmp_path / "inf.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="'sums' has NaN or infinite"):
        checkpoint.load(tmp_path / "inf.safetensors")


@pytest.mark.parametrize("config", ["{}", "[]", '{"backbone": 5}', "null"])
def test_a_damaged_config_is_a_clear_error(tmp_path, config):
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = tmp_path / "m.safetensors"
    checkpoint.save(_model(), path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta["config"] = config
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="m.safetensors: "):
        checkpoint.load(path)


def test_temporary_files_of_an_interrupted_save_are_removed_by_the_next(tmp_path):
    import fcntl
    import time

    from imprinting.files import STALE_SECONDS

    path = tmp_path / "m.safetensors"
    old = time.time() - 2 * STALE_SECONDS
    litter = tmp_path / ".m.safetensors.abc123.tmp"  # what kill -9 during a save leaves
    litter.write_bytes(b"partial")
    os.utime(litter, (old, old))
    busy = tmp_path / ".m.safetensors.busy.tmp"  # another live writer, still writing
    busy.write_bytes(b"partial")
    os.utime(busy, (old, old))
    fresh = tmp_path / ".m.safetensors.fresh.tmp"  # too new to judge
    fresh.write_bytes(b"partial")
    other = tmp_path / ".other.safetensors.x.tmp"  # another file's: not ours to remove
    other.write_bytes(b"partial")
    os.utime(other, (old, old))
    with open(busy, "rb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        checkpoint.save(_model(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".m.safetensors.busy.tmp", ".m.safetensors.fresh.tmp", ".other.safetensors.x.tmp", "m.safetensors"])
    checkpoint.load(path)
