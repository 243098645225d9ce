"""Every bad command-line input is refused at the edge: one ``Error:`` line, exit status 2,
no traceback, and no file written or changed."""

from __future__ import annotations

import sqlite3
import subprocess

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers import make_image, one_error_line
from imprinting import checkpoint
from imprinting.build import create_model
from imprinting.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result, *words) -> str:
    """A usage error (exit 2): one ``Error:`` line naming ``words``."""
    return one_error_line(result, 2, *words)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    m = create_model("conv4", pretrained=False, dim=16)
    m.add_class("red", torch.randn(2, 16))
    path = tmp_path_factory.mktemp("cli") / "m.safetensors"
    checkpoint.save(m, path)
    return path


@pytest.fixture
def image(tmp_path):
    return make_image(tmp_path / "ok.png")


@pytest.mark.parametrize("args, words", [
    (["-k", "-1"], ["--top-k", "-1"]),
    (["-k", "0"], ["--top-k", "0"]),
    (["-k", "two"], ["--top-k"]),
    (["--unknown-threshold", "nan"], ["--unknown-threshold", "not a finite number"]),
    (["--unknown-threshold", "inf"], ["--unknown-threshold", "not a finite number"]),
    (["--unknown-threshold", "1.5"], ["--unknown-threshold", "range"]),
])
def test_predict_options(model, image, args, words):
    refused(run("predict", model, image, *args), *words)


@pytest.mark.parametrize("args, words", [
    (["--dim", "-5"], ["--dim", "-5"]),
    (["--image-size", "0"], ["--image-size", "0"]),
    (["--image-size", "-224"], ["--image-size"]),
    (["--scale", "nan"], ["--scale", "not a finite number"]),
    (["--scale", "0"], ["--scale", "range"]),
    (["--scale", "-inf"], ["--scale", "not a finite number"]),
    (["--unknown-threshold", "nan"], ["--unknown-threshold", "not a finite number"]),
])
def test_create_options(tmp_path, args, words):
    out = tmp_path / "new.safetensors"
    refused(run("create", out, "--backbone", "conv4", "--random-init", *args), *words)
    assert not out.exists()


def test_create_where_no_file_can_be_written(tmp_path):
    refused(run("create", "/proc/new.safetensors", "--backbone", "conv4", "--random-init"), "cannot write in /proc")
    (tmp_path / "folder.safetensors").mkdir()
    refused(run("create", tmp_path / "folder.safetensors", "--backbone", "conv4"), "folder.safetensors")


@pytest.mark.parametrize("name, words", [
    ("two\nlines", ["control character", "'\\n'"]),
    ("tab\there", ["control character"]),
    ("x" * 201, ["201 characters", "limit 200"]),
    ("   ", ["empty"]),
])
def test_class_names(model, image, name, words):
    before = model.read_bytes()
    refused(run("add-class", model, "--name", name, image), *words)
    assert model.read_bytes() == before


def test_a_name_of_200_printable_characters_is_fine(tmp_path, model, image):
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(model.read_bytes())
    name = "é" * 200
    result = run("add-class", copy, "--name", name, image)
    assert result.exit_code == 0, result.output
    assert name in checkpoint.load(copy).class_names


@pytest.mark.parametrize("config, words", [("{}", ["no 'backbone' field"]), ("[]", ["not an object"]),
                                           ("not json", ["damaged header"])])
def test_a_damaged_header_is_refused_before_any_work(tmp_path, model, image, config, words):
    with safe_open(str(model), framework="pt") as f:
        meta = f.metadata()
    meta["config"] = config
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(model)), str(bad), metadata=meta)
    for args in (["info", bad], ["predict", bad, image], ["add-class", bad, "--name", "x", image],
                 ["serve", bad, "--store", tmp_path / "s.sqlite"]):
        refused(run(*args), "bad.safetensors", *words)
    assert not (tmp_path / "s.sqlite").exists()


def test_serve_refuses_another_applications_sqlite_file(tmp_path, model):
    other = tmp_path / "app.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.commit()
    db.close()
    before = other.read_bytes()
    refused(run("serve", model, "--store", other), "not a class store", "invoices")
    assert other.read_bytes() == before


@pytest.mark.parametrize("args, words", [
    (["--port", "70000"], ["--port"]), (["--max-images", "0"], ["--max-images"]),
    (["--unknown-threshold", "nan"], ["not a finite number"]), (["--memory-limit-mb", "10"], ["--memory-limit-mb"]),
    (["--header-timeout", "inf"], ["--header-timeout"]), (["--max-request-mb", "nan"], ["--max-request-mb"]),
    (["--token", "  "], ["--token"]),
])
def test_serve_options(tmp_path, model, args, words):
    refused(run("serve", model, "--store", tmp_path / "s.sqlite", *args), *words)


def test_a_store_or_model_on_a_read_only_mount(tmp_path, model):
    where = tmp_path / "ro"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        store = where / "store.sqlite"
        db = sqlite3.connect(store)
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.commit()
        db.close()
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        refused(run("serve", model, "--store", store), "store.sqlite", "Read-only file system")
        refused(run("serve", model, "--store", where / "new.sqlite"), "cannot write in", "Read-only file system")
        refused(run("create", where / "m.safetensors", "--backbone", "conv4"), "Read-only file system")
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_model_with_random_bytes_in_the_middle_is_refused_by_every_command(tmp_path, model, image):
    """4 KB of random bytes in the middle of the file (the tensors): caught by the checksum."""
    import os

    bad = tmp_path / "bad.safetensors"
    data = bytearray(model.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = os.urandom(len(data[middle:middle + 4096]))
    bad.write_bytes(bytes(data))
    for args in (["info", bad], ["predict", bad, image], ["add-class", bad, "--name", "x", image],
                 ["serve", bad, "--store", tmp_path / "s.sqlite"]):
        result = run(*args)
        message = result.output.strip()
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (args, message)
        assert message.startswith("Error:") and len(message.splitlines()) == 1, message
        assert "bad.safetensors: corrupt model file" in message and "checksum" in message, message
    assert bad.read_bytes() == bytes(data)
