"""The classes file and the export folder: round trips, atomic writes, clear errors."""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import numpy as np
import pytest

from imprinting.lite import ClassesData, ExportFormatError, load, load_classes, save_classes
from imprinting.lite import format as fmt


def _data(c=3, d=4, **kw) -> ClassesData:
    rng = np.random.default_rng(0)
    sums = rng.standard_normal((c, d))
    return ClassesData(
        class_names=kw.pop("names", [f"c{i}" for i in range(c)]),
        weights=(sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32),
        scale=np.array([10.0], np.float32),
        sums=sums,
        counts=np.arange(c),
        dim=d,
        **kw,
    )


def _write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _header(**over):
    h = {"format": "imprinting-classes", "version": 1, "class_names": ["a"], "dim": 2}
    h.update(over)
    return np.frombuffer(json.dumps(h).encode(), np.uint8)


def _arrays(**over):
    a = {"weights": np.ones((1, 2), np.float32), "scale": np.ones(1, np.float32),
         "sums": np.ones((1, 2)), "counts": np.ones(1, np.int64)}
    a.update(over)
    return a


def test_round_trip_keeps_every_bit(tmp_path):
    data = _data(names=["rose", "Sonnenblume ✿", "Ωmega"], unknown_threshold=0.35, embedder_id="abc",
                 per_class_scale=False, initial_scale=12.5)
    path = tmp_path / "classes.npz"
    save_classes(data, path)
    back = load_classes(path)
    assert back.class_names == data.class_names and back.dim == 4
    assert back.unknown_threshold == 0.35 and back.embedder_id == "abc" and back.initial_scale == 12.5
    for key, dtype in (("weights", np.float32), ("scale", np.float32), ("sums", np.float64), ("counts", np.int64)):
        assert getattr(back, key).dtype == dtype
        np.testing.assert_array_equal(getattr(back, key), getattr(data, key))
    assert load_classes(tmp_path).class_names == data.class_names  # a folder means its classes.npz
    # plain numpy reads it without pickle
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {"header", "weights", "scale", "sums", "counts"}
        assert json.loads(npz["header"].tobytes())["version"] == fmt.CLASSES_VERSION


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "classes.npz"
    save_classes(_data(), path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        save_classes(_data(c=5), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["classes.npz"]  # no temporary file left


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "truncated or corrupt"),
        (lambda p: p.write_bytes(b"hello, I am not a numpy file"), "truncated or corrupt"),
        (lambda p: np.save(open(p, "wb"), np.zeros(3)), "a single array"),
        (lambda p: _write_npz(p, x=np.zeros(3)), "not an imprinting classes file \\(no header\\)"),
        (lambda p: _write_npz(p, header=np.zeros(3, np.float32), **_arrays()), "header is float32"),
        (lambda p: _write_npz(p, header=np.frombuffer(b"\xff\xfe{", np.uint8), **_arrays()), "damaged header"),
        (lambda p: _write_npz(p, header=_header(format="something-else"), **_arrays()), "no 'imprinting-classes'"),
        (lambda p: _write_npz(p, header=_header(version=99), **_arrays()), "newer version .*upgrade"),
        (lambda p: _write_npz(p, header=_header(version="1"), **_arrays()), "damaged header"),
        (lambda p: _write_npz(p, header=_header(), weights=np.ones((1, 2), np.float32)), "missing scale, sums, counts"),
        (lambda p: _write_npz(p, header=_header(), **_arrays(sums=np.ones((2, 2)))), "sums has shape"),
        (lambda p: _write_npz(p, header=_header(), **_arrays(counts=np.ones(1, np.float32))), "counts has dtype"),
        (lambda p: _write_npz(p, header=_header(), **_arrays(weights=np.array([[np.nan, 1]], np.float32))), "NaN"),
        (lambda p: _write_npz(p, header=_header(), **_arrays(counts=-np.ones(1, np.int64))), "negative"),
        (lambda p: _write_npz(p, header=_header(class_names=[1]), **_arrays()), "not a list of strings"),
        (lambda p: _write_npz(p, header=_header(), **_arrays(scale=np.ones(3, np.float32))), "scale has shape"),
        (lambda p: _write_npz(p, header=_header(), **_arrays(weights=np.array([None, None], dtype=object))),
         "truncated or corrupt"),  # an object array would need pickle
    ],
)
def test_bad_classes_files_are_named_and_explained(tmp_path, make, message):
    path = tmp_path / "classes.npz"
    make(path)
    with pytest.raises(ExportFormatError, match=message) as info:
        load_classes(path)
    assert str(path) in str(info.value)


def test_truncated_archive(tmp_path):
    path = tmp_path / "classes.npz"
    save_classes(_data(c=50, d=64), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ExportFormatError, match="truncated or corrupt"):
        load_classes(path)
    with pytest.raises(ExportFormatError, match="no such classes file"):
        load_classes(tmp_path / "missing.npz")


def test_duplicate_names_are_refused():
    with pytest.raises(ExportFormatError, match="not unique"):
        _data(names=["a", "a", "b"])


def test_bad_export_folders(tmp_path, conv4_export):
    with pytest.raises(ExportFormatError, match="no such export folder"):
        load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportFormatError, match="manifest.json: no such file; is .* written by `imprint export`"):
        load(tmp_path / "empty")

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(conv4_export, dst)
        return dst

    foreign = copy("foreign")
    (foreign / "manifest.json").write_text(json.dumps({"format": "someone-else", "version": 1}))
    with pytest.raises(ExportFormatError, match="not an imprinting export"):
        load(foreign)
    newer = copy("newer")
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "version": 7}))
    with pytest.raises(ExportFormatError, match="newer version"):
        load(newer)
    damaged = copy("damaged")
    (damaged / "preprocess.json").write_text("{not json")
    with pytest.raises(ExportFormatError, match="damaged preprocessing recipe"):
        load(damaged)
    (damaged / "preprocess.json").write_text(json.dumps({"image_size": 28, "resize_size": 28, "mean": [0.5, 0.5],
                                                         "std": [0.5], "in_chans": 1}))
    with pytest.raises(ExportFormatError, match="do not fit 1 channels"):
        load(damaged)
    broken_graph = copy("broken_graph")
    (broken_graph / "embedder.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ExportFormatError, match="embedder.onnx: not a loadable ONNX model"):
        load(broken_graph)
    no_classes = copy("no_classes")
    (no_classes / "classes.npz").unlink()
    with pytest.raises(ExportFormatError, match="no such classes file"):
        load(no_classes)


def test_classes_of_another_embedder_with_the_same_size_are_refused(tmp_path, conv4_export):
    other = tmp_path / "other"
    shutil.copytree(conv4_export, other)
    data = load_classes(other)
    data.embedder_id = "0" * 64
    save_classes(data, other / "classes.npz")
    with pytest.raises(ExportFormatError, match="made with another embedder"):
        load(other)


def test_files_in_the_archive_are_not_compressed_or_pickled(tmp_path):
    path = tmp_path / "classes.npz"
    save_classes(_data(), path)
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            arr = np.lib.format.read_array(io.BytesIO(z.read(info.filename)), allow_pickle=False)
            assert arr.dtype != object


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        save_classes(_data(), tmp_path / "new.npz")
        assert (tmp_path / "new.npz").stat().st_mode & 0o777 == 0o644
        os.chmod(tmp_path / "new.npz", 0o640)
        save_classes(_data(), tmp_path / "new.npz")  # replacing keeps the file's mode
        assert (tmp_path / "new.npz").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(mask)
