"""The edges of the command line found by a review: an example id SQLite cannot hold, and
threshold options that let NaN through. Each is refused before any work with one ``Error:``
line (exit status 2 for a bad command line, 1 for a well-formed id that names nothing) and
no traceback, and the store is left as it was."""

from __future__ import annotations

import io
import subprocess
import sys

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from helpers import make_image, one_error_line
from imprinting import checkpoint
from imprinting.build import create_model
from imprinting.cli import main

LARGEST_SQLITE_INTEGER = 9223372036854775807  # 2**63 - 1, written out here rather than taken from the CLI


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    m = create_model("conv4", pretrained=False, dim=16)
    m.add_class("red", torch.randn(2, 16))
    path = tmp_path_factory.mktemp("edges") / "m.safetensors"
    checkpoint.save(m, path)
    return path


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def store(model, tmp_path_factory):
    """A service store with class 'mug' taught from two images (ids 1 and 2)."""
    from imprinting.serve.service import Service

    path = tmp_path_factory.mktemp("store") / "store.sqlite"
    with Service.open(model, path) as service:
        service.teach("mug", [("a.png", png(1)), ("b.png", png(2))])
        ids = [e["id"] for e in service.examples("mug")["examples"]]
    assert len(ids) == 2
    return path


# -- example ids --------------------------------------------------------------------------
@pytest.mark.parametrize("example_id, words", [
    ("18446744073709551616", ["18446744073709551616", "out of range"]),  # 2**64: the review's case
    ("9223372036854775808", ["9223372036854775808", "out of range"]),    # 2**63: one past SQLite's limit
    ("0", ["example id 0", "out of range"]),
    ("-1", ["example id -1", "out of range"]),
    ("abc", ["'abc'", "not an example id"]),
    ("1.5", ["'1.5'", "not an example id"]),
    ("9" * 5000, ["not an example id"]),  # past Python's int-from-string digit limit
])
def test_a_bad_example_id_is_one_usage_line(model, store, example_id, words):
    before = store.read_bytes()
    # "--" so that "-1" is read as the id, not as an option
    message = one_error_line(run("examples", "remove", "--store", store, model, "mug", "--", example_id), 2,
                             "EXAMPLE_ID", *words)
    assert len(message) < 300, message  # a huge id is not echoed whole
    assert store.read_bytes() == before


def test_the_largest_sqlite_id_is_looked_up(model, store):
    """2**63 - 1 is a valid id: it names no example here, which is the service's one-line
    error (exit 1), not an overflow."""
    before = store.read_bytes()
    message = one_error_line(run("examples", "remove", model, "mug", LARGEST_SQLITE_INTEGER, "--store", store), 1)
    assert message == f"Error: class 'mug' has no example {LARGEST_SQLITE_INTEGER}"
    assert store.read_bytes() == before


def test_the_reviewed_command_in_a_real_process(model, store):
    """The review's exact command through the interpreter: one line on stderr, exit 2."""
    done = subprocess.run([sys.executable, "-m", "imprinting.cli", "examples", "remove", str(model), "cls",
                           "18446744073709551616", "--store", str(store)],
                          capture_output=True, text=True, timeout=120, check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stdout == "" and len(lines) == 1 and lines[0].startswith("Error:"), done.stderr
    assert "Traceback" not in done.stderr and "18446744073709551616" in lines[0]


# -- thresholds ---------------------------------------------------------------------------
def commands_with(option: str) -> list[list[str]]:
    """The command paths (e.g. ['examples', 'remove']) of every ``imprint`` command that has
    ``option``, found by walking the click tree, so a new command is covered too."""
    found = []

    def walk(command, path):
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
        elif any(option in p.opts for p in command.params):
            found.append(path)

    walk(main, [])
    return found


def test_the_threshold_options_are_where_the_review_says():
    assert sorted(" ".join(p) for p in commands_with("--unknown-threshold")) == ["create", "evaluate", "predict",
                                                                                 "serve"]
    assert sorted(" ".join(p) for p in commands_with("--false-accept")) == ["calibrate", "create"]


@pytest.mark.parametrize("value, words", [
    ("nan", ["not a finite number"]), ("NaN", ["not a finite number"]), ("inf", ["not a finite number"]),
    ("-inf", ["not a finite number"]), ("1.5", ["1.5", "range"]), ("-1.0001", ["-1.0001", "range"]),
    ("1e308", ["range"]), ("abc", ["'abc'", "not a number"]),
])
def test_every_unknown_threshold_refuses_what_is_not_a_cosine(value, words):
    for path in commands_with("--unknown-threshold"):
        one_error_line(run(*path, "--unknown-threshold", value), 2, "--unknown-threshold", *words)


@pytest.mark.parametrize("value, words", [
    ("nan", ["not a finite number"]), ("inf", ["not a finite number"]), ("-0.01", ["range"]),
    ("1", ["range"]), ("2", ["range"]),
])
def test_every_false_accept_refuses_what_is_not_a_share(value, words):
    for path in commands_with("--false-accept"):
        one_error_line(run(*path, "--false-accept", value), 2, "--false-accept", *words)


@pytest.mark.parametrize("value", ["-1", "1", "0.25"])
def test_thresholds_at_and_inside_the_ends_are_accepted(tmp_path, model, value):
    folder = tmp_path / "folder"
    make_image(folder / "red" / "0.png")
    image = make_image(tmp_path / "one.png")
    result = run("predict", model, image, "--unknown-threshold", value, "--json")
    assert result.exit_code == 0, result.output
    result = run("evaluate", model, folder, "--unknown-threshold", value, "--out", tmp_path / "eval", "--json")
    assert result.exit_code == 0, result.output
