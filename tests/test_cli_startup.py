"""`imprint` answers at once: its help (the group's and every command's) and every error in
the command line that needs no model import none of the heavy libraries, each checked in a
fresh interpreter. Behaviour only, no timings (those are benchmarks/cli_startup.py's)."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from imprinting.cli import COMMANDS, main
from imprinting.cli.common import Command

# What `imprint` may import only when a command runs.
HEAVY = {"torch", "torchvision", "timm", "sklearn", "matplotlib", "scipy", "onnx", "onnxruntime", "openvino",
         "fastapi", "uvicorn"}

# `imprint transfer` and `imprint reproduce ...` take their options and help from
# imprinting.experiments.REGISTRY, whose experiment modules import protocol and train (PyTorch)
# at module level. Strict: once that package is light these pass and the marks must go.

PROBE = """
import json, sys
from imprinting.cli import main
code = 0
try:
    main(sys.argv[1:], prog_name="imprint")
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print("HEAVY-MODULES " + json.dumps(heavy))
sys.exit(code)
"""


def imprint(*args, cwd=None):
    """``imprint ARGS`` in a fresh interpreter: (exit status, stdout without the probe's line,
    stderr, the heavy modules imported)."""
    probe = f"HEAVY = {sorted(HEAVY)!r}\n{PROBE}"
    done = subprocess.run([sys.executable, "-c", probe, *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=120, cwd=cwd, check=False)
    out, _, last = done.stdout.rstrip("\n").rpartition("\n")
    assert last.startswith("HEAVY-MODULES "), (done.stdout, done.stderr)
    return done.returncode, out, done.stderr, json.loads(last.split(" ", 1)[1])


def _command_paths() -> list:
    """Every command path of the click tree (['predict'], ['examples', 'list'], ...)."""
    ctx = click.Context(main)
    paths = []
    for name in main.list_commands(ctx):
        paths.append([name])
        if name in ("transfer", "reproduce"):
            continue  # listing reproduce's commands imports the registry: enumerated below
        command = main.get_command(ctx, name)
        if isinstance(command, click.Group):
            paths += [[name, sub] for sub in command.list_commands(ctx)]
    from imprinting.experiments import REGISTRY

    paths += [["reproduce", name] for name in REGISTRY if name != "transfer"]
    return paths


def _param(path):
    return pytest.param(path, id=" ".join(path))


def test_the_group_help_imports_nothing_heavy():
    code, out, err, heavy = imprint("--help")
    assert code == 0, err
    assert heavy == []
    for name in COMMANDS:
        assert f"\n  {name} " in out  # every command listed, with its summary


@pytest.mark.parametrize("path", [_param(p) for p in _command_paths()])
def test_every_command_help_imports_nothing_heavy(path):
    code, out, err, heavy = imprint(*path, "--help")
    assert code == 0, err
    assert out.startswith(f"Usage: imprint {' '.join(path)} ")
    assert heavy == []


def one_error_line(result, status: int, *words):
    code, out, err, heavy = result
    lines = err.strip().splitlines()
    assert code == status, (code, err)
    assert len(lines) == 1 and lines[0].startswith("Error:"), err
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in err and out == ""
    assert heavy == [], heavy


def test_a_missing_model_file_is_one_line_and_imports_nothing_heavy(tmp_path):
    one_error_line(imprint("predict", "missing.safetensors", "some.jpg", cwd=tmp_path), 2,
                   "missing.safetensors: no such model file")


@pytest.mark.parametrize("args, words", [
    (["predict", "MODEL", "x.jpg", "-k", "0"], ["--top-k", "0"]),
    (["predict", "MODEL", "x.jpg", "--engine", "cuda"], ["--engine", "cuda"]),
    (["predict", "MODEL", "x.jpg", "--unknown-threshold", "nan"], ["--unknown-threshold", "not a finite number"]),
    (["add-class", "MODEL", "x.jpg", "--name", " "], ["--name", "empty"]),
    (["info", "MODEL", "--precision", "fp8"], ["--precision", "fp8"]),
    (["create", "out.safetensors", "--scale", "0"], ["--scale", "range"]),
    (["train", "missing-folder", "out.safetensors"], ["FOLDER", "missing-folder"]),
    (["serve", "MODEL", "--store", "store.db", "--port", "70000"], ["--port", "70000"]),
    (["serve", "MODEL"], ["--store"]),
    (["examples", "remove", "MODEL", "cat", "0", "--store", "store.db"], ["example id 0"]),
    (["predict"], ["MODEL"]),
    (["predict", "MODEL", "x.jpg", "--no-such-option"], ["--no-such-option"]),
    (["no-such-command"], ["no-such-command"]),
])
def test_a_bad_command_line_is_one_line_and_imports_nothing_heavy(tmp_path, args, words):
    # MODEL is a file that exists (its header is read only when the command would run) and
    # store.db an empty file: the error is the command line's, whatever the files hold.
    (tmp_path / "MODEL").write_bytes(b"not read")
    (tmp_path / "store.db").write_bytes(b"")
    one_error_line(imprint(*args, cwd=tmp_path), 2, *words)


# -- what the light command line keeps in step with the library --------------------------
def test_every_command_that_runs_is_an_imprint_command():
    """``Command.invoke`` runs the deferred checks (a model file's header), the allocator and
    the --engine default: every leaf of the tree must be one."""

    def leaves(command, path):
        if isinstance(command, click.Group):
            return [leaf for name, sub in command.commands.items() for leaf in leaves(sub, [*path, name])]
        return [(path, command)]

    found = leaves(main, [])
    assert len(found) >= 20
    assert [p for p, c in found if not isinstance(c, Command)] == []
    assert set(main.commands) == set(COMMANDS)


def test_the_summaries_and_choices_kept_in_the_cli_match_the_library():
    from imprinting.cli import models
    from imprinting.cli.common import ENGINE_CHOICES
    from imprinting.engines import ENGINES
    from imprinting.heads import HEADS

    assert models.HEADS == HEADS
    assert ENGINE_CHOICES == ["auto", *ENGINES]
    ctx = click.Context(main)
    for name, (_, summary) in COMMANDS.items():
        if summary is not None:
            real = main.get_command(ctx, name)
            assert click.Command(name, help=summary).get_short_help_str(200) == real.get_short_help_str(200)
