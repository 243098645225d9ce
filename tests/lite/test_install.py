"""The ``imprinting-lite`` distribution (``lite/build.py``) installs into a fresh virtual
environment that has no PyTorch, and the README's torch-free script runs there as written.

Nothing is downloaded: the wheel is built without build isolation, and the runtime's
dependencies (numpy, Pillow, onnxruntime and what they need) are made visible to the fresh
environment by a ``.pth`` file over a folder of links to this environment's installed copies
of exactly those distributions, so ``pip install --no-index`` finds them satisfied and
torch is not there to import."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
RUNTIME_DEPENDENCIES = ("numpy", "pillow", "onnxruntime")


def _build_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lite_build", REPO / "lite" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_module_list_is_closed_under_imports():
    """Every ``imprinting`` module that a listed module imports (at the top or inside a
    function) is listed too, so the distribution never misses a file."""
    build = _build_module()
    listed = {m.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for m in build.MODULES}
    listed = {f"imprinting.{m}" if m != "__init__" else "imprinting" for m in listed}
    for module in build.MODULES:
        if module == "__init__.py":  # its names load lazily, by string, from the full package
            continue
        tree = ast.parse((build.SRC / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.split(".")[0] == "imprinting":
                    assert name in listed, f"{module} imports {name}, which lite/build.py does not package"
                assert name.split(".")[0] not in ("torch", "torchvision", "timm"), f"{module} imports {name}"


def _dependency_closure(names) -> list:
    from packaging.requirements import Requirement

    seen, todo, out = set(), list(names), []
    while todo:
        dist = distribution(todo.pop())
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen.add(key)
        out.append(dist)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


def _link_dependencies(folder: Path) -> list[str]:
    """Links in ``folder`` to the installed files (and metadata) of the runtime's dependencies."""
    folder.mkdir()
    names = []
    for dist in _dependency_closure(RUNTIME_DEPENDENCIES):
        assert dist.metadata["Name"].lower() not in ("torch", "torchvision", "timm")
        names.append(dist.metadata["Name"])
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or []}:
            if top in ("..", "__pycache__") or (folder / top).exists() or not (base / top).exists():
                continue
            (folder / top).symlink_to(base / top)
    return names


def _doc_script() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- torch-free-script -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md: no ```python block after <!-- torch-free-script -->"
    return match.group(1)


@pytest.mark.slow
def test_fresh_venv_without_torch_installs_and_runs_the_readme_script(effnet_export, tiny_images, tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, str(REPO / "lite" / "build.py"), "--outdir", str(dist), "--wheel",
                            "--no-isolation"], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("imprinting_lite-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = tmp_path / "deps"
    linked = _link_dependencies(deps)
    (site / "_runtime_deps.pth").write_text(str(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1")

    def run(*args, cwd=None):
        return subprocess.run([str(python), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)

    installed = run("-m", "pip", "install", "--no-index", str(wheel))  # dependencies found satisfied, none fetched
    assert installed.returncode == 0, installed.stdout + installed.stderr
    check = run("-m", "pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    no_torch = run("-c", "import torch")
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr, (linked, no_torch.stderr)
    where = run("-c", "import imprinting.lite, sys; print(imprinting.lite.__file__); "
                      "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')))")
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines() == [str(site / "imprinting" / "lite" / "__init__.py"), "[]"]

    work = tmp_path / "readme"  # laid out as the README's text says
    shutil.copytree(effnet_export, work / "lite_export")
    for group, folder in (("red", "roses"), ("green", "tulips")):
        (work / folder).mkdir(parents=True)
        for i, p in enumerate(tiny_images[group][:4]):
            Image.open(p).convert("RGB").save(work / folder / f"{i}.jpg")
    Image.open(tiny_images["red"][4]).convert("RGB").save(work / "photo.jpg")
    before = np.load(work / "lite_export" / "classes.npz")["counts"].tolist()
    script = work / "readme_script.py"
    script.write_text(_doc_script())
    result = run(str(script), cwd=work)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "rose", result.stdout
    with np.load(work / "lite_export" / "classes.npz") as npz:
        assert npz["counts"].tolist() == before + [4, 4]
