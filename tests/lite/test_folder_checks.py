"""The lite runtime checks its export folder at load: every file the manifest names stays in
the folder, every manifest and recipe field has the right type and range, the classes' values
are usable, and a classes file's arrays are sized from their headers before any is allocated.
Every refusal is one ``ExportFormatError`` naming the file and the field."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from imprinting import checkpoint
from imprinting.cli import main
from imprinting.errors import UserError
from imprinting.lite import ClassesData, ExportFormatError, load, load_classes

DROP = object()  # a field to remove


@pytest.fixture
def folder(conv4_export, tmp_path):
    """A copy of the conv4 export (3 classes: base_a, base_b, blue; per-class scale; 32-d)."""
    dst = tmp_path / "export"
    shutil.copytree(conv4_export, dst)
    return dst


def _edit_json(path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is DROP:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))  # NaN is written as NaN, which json.loads reads back


def _edit_files(folder, **entries) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    files = manifest["files"]
    for key, value in entries.items():
        if value is DROP:
            files.pop(key)
        else:
            files[key] = value
    _edit_json(folder / "manifest.json", files=files)


def _rewrite_classes(path, header=None, **arrays) -> None:
    """Rewrite a classes file with plain numpy (not ``save_classes``, which refuses bad values)."""
    with np.load(path, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    head = json.loads(data["header"].tobytes())
    head.update(header or {})
    data["header"] = np.frombuffer(json.dumps(head).encode(), np.uint8)
    data.update(arrays)
    with open(path, "wb") as f:
        np.savez(f, **data)


def _refused(folder, pattern: str, file: str) -> ExportFormatError:
    """Loading ``folder`` is refused with an error that names ``file`` and matches ``pattern``."""
    with pytest.raises(ExportFormatError, match=pattern) as info:
        load(folder)
    assert str(folder / file) in str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    return info.value


# -- paths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["classes", "embedder", "model_int8"])
@pytest.mark.parametrize("name", ["../outside.npz", "sub/../../outside.npz", "ABSOLUTE", "..\\outside.npz",
                                  "C:/outside.npz", ""])
def test_manifest_files_must_stay_in_the_folder(folder, key, name):
    outside = folder.parent / "outside.npz"
    shutil.copy(folder / "classes.npz", outside)  # a valid classes file: reading it would succeed
    before = outside.read_bytes()
    _edit_files(folder, **{key: str(outside) if name == "ABSOLUTE" else name})
    _refused(folder, rf"files\.{key} is ", "manifest.json")
    assert outside.read_bytes() == before


def test_symlinks_leading_out_of_the_folder_are_refused(folder):
    outside = folder.parent / "elsewhere"
    outside.mkdir()
    shutil.move(folder / "classes.npz", outside / "classes.npz")
    (folder / "classes.npz").symlink_to(outside / "classes.npz")
    _refused(folder, r"files\.classes is 'classes\.npz', which leads out of the export folder", "manifest.json")
    _edit_files(folder, classes=DROP)  # the default name is checked the same way
    _refused(folder, r"files\.classes is 'classes\.npz', which leads out", "manifest.json")

    shutil.move(folder / "embedder.onnx", outside / "embedder.onnx")
    (folder / "embedder.onnx").symlink_to(outside / "embedder.onnx")
    _refused(folder, r"files\.embedder is 'embedder\.onnx', which leads out", "manifest.json")


def test_symlinks_within_the_folder_load_and_save_stays_inside(folder):
    (folder / "classes.npz").rename(folder / "real.npz")
    (folder / "classes.npz").symlink_to("real.npz")
    lite = load(folder)
    assert lite.class_names == ["base_a", "base_b", "blue"]
    assert lite.save() == folder / "classes.npz"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["export"]  # nothing written beside the folder


# -- values --------------------------------------------------------------------------------
def _conv4_arrays(folder) -> dict:
    with np.load(folder / "classes.npz", allow_pickle=False) as npz:
        return {k: npz[k].copy() for k in ("weights", "scale", "sums", "counts")}


@pytest.mark.parametrize(
    "row, value, pattern",
    [
        (0, -1e30, r"scale is not a finite number in \(0, 10000\] \(class 'base_a'\)"),
        (1, 0.0, r"scale is not a finite number in \(0, 10000\] \(class 'base_b'\)"),
        (2, np.nan, r"scale is not a finite number in \(0, 10000\] \(class 'blue'\)"),
        (1, 2e4, r"scale is not a finite number in \(0, 10000\] \(class 'base_b'\)"),
    ],
)
def test_bad_per_class_scales_are_refused_naming_the_class(folder, row, value, pattern):
    scale = _conv4_arrays(folder)["scale"]
    assert scale.shape == (3,)
    scale[row] = value
    _rewrite_classes(folder / "classes.npz", scale=scale)
    _refused(folder, pattern, "classes.npz")


@pytest.mark.parametrize("field, row, value, pattern", [
    ("weights", 2, 0.0, r"weights: the class vector is all zeros \(class 'blue'\)"),
    ("weights", 0, np.inf, r"weights has NaN or infinite values \(class 'base_a'\)"),
    ("sums", 2, np.nan, r"sums has NaN or infinite values \(class 'blue'\)"),
    ("counts", 1, -1, r"negative example counts \(class 'base_b'\)"),
])
def test_bad_class_rows_are_refused_naming_the_class(folder, field, row, value, pattern):
    arr = _conv4_arrays(folder)[field]
    arr[row] = value
    _rewrite_classes(folder / "classes.npz", **{field: arr})
    _refused(folder, pattern, "classes.npz")


@pytest.mark.parametrize("header, pattern", [
    ({"unknown_threshold": 5.0}, r"unknown_threshold is 5\.0, not a cosine in \[-1, 1\]"),
    ({"unknown_threshold": -1.5}, r"unknown_threshold is -1\.5, not a cosine"),
    ({"unknown_threshold": math.nan}, r"unknown_threshold is nan, not a cosine"),
    ({"unknown_threshold": "0.3"}, r"header field unknown_threshold is '0\.3', not a number"),
    ({"initial_scale": -3}, r"initial_scale is -3\.0, not a finite number"),
    ({"dim": "32"}, r"header field dim is '32', not a positive integer"),
    ({"per_class_scale": "yes"}, r"header field per_class_scale is 'yes'"),
    ({"embedder_id": 7}, r"header field embedder_id is 7, not a string"),
])
def test_bad_header_values_are_refused_naming_the_field(folder, header, pattern):
    _rewrite_classes(folder / "classes.npz", header=header)
    _refused(folder, pattern, "classes.npz")


def _minimal_file(path, scale, **header) -> None:
    """A classes file with only the fields the first version wrote and a shared scale."""
    head = {"format": "imprinting-classes", "version": 1, "class_names": ["a", "b"], "dim": 2, **header}
    with open(path, "wb") as f:
        np.savez(f, header=np.frombuffer(json.dumps(head).encode(), np.uint8),
                 weights=np.array([[1, 0], [0, 1]], np.float32), scale=np.array([scale], np.float32),
                 sums=np.array([[1.0, 0], [0, 0]]), counts=np.array([1, 0], np.int64))


def test_a_bad_shared_scale_is_refused(tmp_path):
    _minimal_file(tmp_path / "c.npz", -1e30)
    with pytest.raises(ExportFormatError, match=r"c\.npz: .*scale is -1e\+30, not a finite number in \(0, 10000\]"):
        load_classes(tmp_path / "c.npz")


def test_values_at_the_bounds_and_minimal_old_files_load(tmp_path):
    _minimal_file(tmp_path / "old.npz", 10.0)  # no initial_scale, unknown_threshold, embedder_id
    old = load_classes(tmp_path / "old.npz")
    assert old.class_names == ["a", "b"] and old.unknown_threshold is None and old.initial_scale == 10.0
    for threshold in (-1.0, 1.0, 0):
        _minimal_file(tmp_path / "edge.npz", 1e4, unknown_threshold=threshold)
        back = load_classes(tmp_path / "edge.npz")
        assert back.unknown_threshold == threshold and back.scale.tolist() == [1e4]


def test_saving_refuses_what_loading_would_refuse(folder):
    with pytest.raises(ExportFormatError, match=r"scale is -1, not a finite number"):
        ClassesData(["a"], np.ones((1, 2)), np.array([-1.0]), np.ones((1, 2)), np.ones(1), dim=2)
    lite = load(folder)
    before = (folder / "classes.npz").read_bytes()
    lite.unknown_threshold = 5.0
    with pytest.raises(ExportFormatError, match="unknown_threshold is 5.0"):
        lite.save()
    assert (folder / "classes.npz").read_bytes() == before


def test_classes_of_another_size_are_refused_before_reading_their_arrays(folder):
    _rewrite_classes(folder / "classes.npz", header={"dim": 16}, weights=np.ones((3, 16), np.float32),
                     sums=np.ones((3, 16)))
    _refused(folder, r"16-d classes for a 32-d embedder", "classes.npz")


# -- array sizes from the .npy headers -----------------------------------------------------
def _npy_member(archive: zipfile.ZipFile, name: str, array=None, shape=None, dtype=None, data_bytes=None) -> None:
    """Write ``name.npy``: ``array`` itself, or a header declaring ``shape``/``dtype`` followed by
    ``data_bytes`` zero bytes (default: exactly the declared size), streamed in 16 MiB chunks."""
    with archive.open(name + ".npy", "w", force_zip64=True) as f:
        if array is not None:
            np.lib.format.write_array(f, array)
            return
        dtype = np.dtype(dtype)
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        left = math.prod(shape) * dtype.itemsize if data_bytes is None else data_bytes
        chunk = bytes(1 << 24)
        while left:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))


def _header_array(names, dim) -> np.ndarray:
    head = {"format": "imprinting-classes", "version": 1, "class_names": names, "dim": dim}
    return np.frombuffer(json.dumps(head).encode(), np.uint8)


BOMB_CLASSES, BOMB_DIM = 12_500, 1280  # weights: 64 MB of float32 zeros, sums: 128 MB of float64 zeros


@pytest.fixture(scope="module")
def consistent_bomb(tmp_path_factory):
    """A deflated classes file whose arrays all agree with its header, declaring 192 MB of
    zeros: a few hundred KB on disk."""
    path = tmp_path_factory.mktemp("bomb") / "classes.npz"
    c, d = BOMB_CLASSES, BOMB_DIM
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        _npy_member(z, "header", _header_array([f"class {i}" for i in range(c)], d))
        _npy_member(z, "weights", shape=(c, d), dtype=np.float32)
        _npy_member(z, "scale", np.ones(1, np.float32))
        _npy_member(z, "sums", shape=(c, d), dtype=np.float64)
        _npy_member(z, "counts", np.zeros(c, np.int64))
    return path


def _load_measured(path) -> tuple[ExportFormatError, float, int]:
    """(the error, seconds, peak bytes allocated while loading: numpy reports its arrays to tracemalloc)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ExportFormatError) as info:
            load_classes(path)
        return info.value, time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_compression_bomb_is_refused_before_allocating(consistent_bomb):
    size = consistent_bomb.stat().st_size
    declared = BOMB_CLASSES * BOMB_DIM * 4  # the weights, checked first
    assert declared > 64 * size + (1 << 20)  # the file really is a bomb by the documented bound
    error, seconds, peak = _load_measured(consistent_bomb)
    assert f"refused: weights declares ({BOMB_CLASSES}, {BOMB_DIM}) float32" in str(error)
    assert str(consistent_bomb) in str(error)
    assert seconds < 1.0 and peak < 16 * 2**20, (seconds, peak)


@pytest.mark.parametrize("shape, data_bytes, pattern", [
    # the brief's case: 1 class, but sums declares 2 GB (and holds 16 bytes)
    ((200_000, 1280), 16, r"refused: sums declares \(200000, 1280\) float64 \(2,048,000,128 bytes\)"),
    # a member shorter than its header says
    ((1, 1280), 16, r"sums declares \(1, 1280\) float64, 10,368 bytes, but the archive holds 144 bytes"),
    # a member of the right size but the wrong shape for the header's classes
    ((2, 1280), None, r"sums has shape \(2, 1280\), expected \(1, 1280\)"),
])
def test_member_headers_are_checked_before_reading(tmp_path, shape, data_bytes, pattern):
    path = tmp_path / "classes.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        _npy_member(z, "header", _header_array(["a"], 1280))
        _npy_member(z, "weights", np.ones((1, 1280), np.float32))
        _npy_member(z, "scale", np.ones(1, np.float32))
        _npy_member(z, "sums", shape=shape, dtype=np.float64, data_bytes=data_bytes)
        _npy_member(z, "counts", np.ones(1, np.int64))
    error, seconds, peak = _load_measured(path)
    assert str(path) in str(error)
    assert re.search(pattern, str(error)), str(error)
    assert seconds < 1.0 and peak < 16 * 2**20, (seconds, peak)


# -- manifest and recipe fields ------------------------------------------------------------
@pytest.mark.parametrize("changes, pattern", [
    ({"embedding_dim": DROP}, r"embedding_dim is None, not a positive integer"),
    ({"embedding_dim": "32"}, r"embedding_dim is '32', not a positive integer"),
    ({"embedding_dim": 0}, r"embedding_dim is 0, not a positive integer"),
    ({"embedding_dim": True}, r"embedding_dim is True, not a positive integer"),
    ({"files": ["classes.npz"]}, r"files is \['classes\.npz'\], not an object of file names"),
    ({"files": DROP}, r"files is None, not an object"),
    ({"embedder_id": 7}, r"embedder_id is 7, not a string"),
])
def test_bad_manifest_fields_are_named(folder, changes, pattern):
    _edit_json(folder / "manifest.json", **changes)
    _refused(folder, pattern, "manifest.json")


def test_a_file_entry_that_is_not_a_string_is_named(folder):
    _edit_files(folder, classes=5)
    _refused(folder, r"files\.classes is 5, not a file name", "manifest.json")


def test_a_manifest_without_the_optional_fields_loads(folder):
    _edit_json(folder / "manifest.json", embedder_id=DROP)
    _edit_files(folder, classes=DROP)  # classes.npz by default
    assert load(folder).class_names == ["base_a", "base_b", "blue"]


@pytest.mark.parametrize("changes, pattern", [
    ({"image_size": DROP}, r"image_size is None, not an integer in \[1, 4096\]"),
    ({"image_size": "28"}, r"image_size is '28', not an integer"),
    ({"image_size": 0}, r"image_size is 0, not an integer"),
    ({"image_size": 28.5}, r"image_size is 28\.5, not an integer"),
    ({"resize_size": 5000}, r"resize_size is 5000, not an integer in \[1, 4096\]"),
    ({"resize_size": -1}, r"resize_size is -1, not an integer"),
    ({"interpolation": "cubic-spline"}, r"interpolation is 'cubic-spline', not one of nearest, bilinear"),
    ({"interpolation": 3}, r"interpolation is 3, not one of"),
    ({"in_chans": 2}, r"in_chans is 2, not 1 or 3"),
    ({"mean": [math.nan]}, r"mean is \[nan\], not a list of finite numbers"),
    ({"std": [0.0]}, r"std is \[0\.0\]: every std must be positive"),
    ({"std": ["0.5"]}, r"std is \['0\.5'\], not a list of finite numbers"),
    ({"std": [0.5, 0.5, 0.5]}, r"std has 3 values: mean/std do not fit 1 channels"),
])
def test_bad_recipe_fields_are_named_at_load(folder, changes, pattern):
    recipe = json.loads((folder / "preprocess.json").read_text())
    assert recipe["in_chans"] == 1 and len(recipe["mean"]) == 1  # what the edits above assume
    _edit_json(folder / "preprocess.json", **changes)
    _refused(folder, "damaged preprocessing recipe \\(" + pattern, "preprocess.json")


def test_the_command_line_prints_one_line(folder, conv4_model, tmp_path):
    checkpoint.save(conv4_model, tmp_path / "m.safetensors")
    _edit_files(folder, classes="../../stolen.npz")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "m.safetensors"), str(folder), "--classes-only"])
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1 and "files.classes is '../../stolen.npz'" in result.output
