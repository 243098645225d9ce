"""``imprinting.lite`` runs where PyTorch is not installed: checked in fresh interpreters in
which importing torch, torchvision or timm raises ImportError. Also runs the README's script."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

DOC = Path(__file__).resolve().parents[2] / "README.md"

LITE_SESSION = """
import sys
import numpy as np
import imprinting.lite as lite
from imprinting.lite import load

model = load({folder!r})
model.imprint("new class", {teach!r})
preds = model.predict({query!r}, k=2)
assert preds[0].classes[0] in model.class_names and len(preds) == {n}
model.save({out!r})
back = load({folder!r}, classes={out!r})
assert back.class_names == model.class_names
np.testing.assert_array_equal(back.sums, model.sums)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm"))
assert not heavy, heavy
print("OK", len(model.class_names), sorted(m for m in sys.modules if m.startswith("imprinting")))
"""


def _session_code(folder, tiny_images, out):
    files = [str(p) for p in tiny_images["blue"]]
    return LITE_SESSION.format(folder=str(folder), teach=files[:3], query=files[3:], n=len(files[3:]), out=str(out))


def test_lite_code_never_imports_torch(run_without_torch, conv4_export, effnet_export, tiny_images, tmp_path):
    """The lite modules and everything they import, with ``imprinting/__init__.py`` kept out
    of the way: torch is blocked, yet loading, imprinting, predicting and saving work."""
    for folder in (conv4_export, effnet_export):
        result = run_without_torch(_session_code(folder, tiny_images, tmp_path / f"{folder.name}.npz"), stub_parent=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("OK")
        loaded = result.stdout.split(" ", 2)[2]
        assert "imprinting.export" not in loaded and "imprinting.model" not in loaded


def test_import_imprinting_lite_never_imports_torch(run_without_torch, conv4_export, tiny_images, tmp_path):
    """The plain ``import imprinting.lite``, as a device does it."""
    result = run_without_torch(_session_code(conv4_export, tiny_images, tmp_path / "c.npz"))
    assert result.returncode == 0, result.stderr


def test_the_blocker_works(run_without_torch):
    result = run_without_torch("import torch")
    assert result.returncode != 0 and "torch-free check" in result.stderr


def _doc_script() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- torch-free-script -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"{DOC}: no ```python block after <!-- torch-free-script -->"
    return match.group(1)


def test_readme_script_is_short():
    lines = [line for line in _doc_script().splitlines() if line.strip()]
    assert len(lines) <= 10


def test_readme_script_runs_as_written(run_without_torch, effnet_export, tiny_images, tmp_path):
    """The README's torch-free script, verbatim, in a folder laid out as the text says, without torch."""
    work = tmp_path / "readme"
    shutil.copytree(effnet_export, work / "lite_export")
    for src_group, folder in (("red", "roses"), ("green", "tulips")):
        (work / folder).mkdir(parents=True)
        for i, p in enumerate(tiny_images[src_group][:4]):
            Image.open(p).convert("RGB").save(work / folder / f"{i}.jpg")
    Image.open(tiny_images["red"][4]).convert("RGB").save(work / "photo.jpg")
    before = np.load(work / "lite_export" / "classes.npz")["counts"].tolist()
    result = run_without_torch(_doc_script(), cwd=work)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "rose", result.stdout
    with np.load(work / "lite_export" / "classes.npz") as npz:
        assert npz["counts"].tolist() == before + [4, 4]
