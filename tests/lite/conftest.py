"""Fixtures for the edge export and the lite runtime: models exported once per session,
real images from ../shared/data (skipped with the reason when absent), tiny generated ones."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imprinting
from imprinting.export import export

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FLOWERS_JPG = SHARED_DATA / "flowers102" / "flowers-102" / "jpg"
CUB_IMAGES = SHARED_DATA / "cub" / "CUB_200_2011" / "images"
SRC = Path(imprinting.__file__).resolve().parent  # src/imprinting
EFFNET_SIZE = 96  # small crops keep the suite fast on a 2-core CPU


def make_image(path: Path, size=(40, 32), color=(200, 30, 30), seed: int = 0, mode: str = "RGB") -> Path:
    """A small image: one colour, a gradient and noise (so resizing has detail to get wrong)."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(-60, 60, w)[None, :, None] + np.linspace(-30, 30, h)[:, None, None]
    arr = np.clip(np.array(color)[None, None, :] + ramp + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture(scope="session")
def real_images() -> list[Path]:
    """12 real photos: 8 Flowers-102 images (4 classes' first files) and 4 CUB birds."""
    if not FLOWERS_JPG.is_dir() or not CUB_IMAGES.is_dir():
        pytest.skip(f"real images not found at {SHARED_DATA} (../shared/data beside the checkout)")
    flowers = sorted(FLOWERS_JPG.glob("*.jpg"))[:8]
    birds = [sorted(d.glob("*.jpg"))[0] for d in sorted(CUB_IMAGES.iterdir())[:4]]
    return flowers + birds


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> dict[str, list[Path]]:
    """Generated images in three colour classes, of assorted sizes, aspect ratios and modes."""
    root = tmp_path_factory.mktemp("tiny")
    sizes = [(40, 32), (31, 57), (64, 64), (23, 19), (90, 41)]
    modes = ["RGB", "RGB", "L", "RGB", "RGBA"]
    colors = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
    out = {}
    for c, (name, color) in enumerate(colors.items()):
        out[name] = [
            make_image(root / name / f"{i}.png", sizes[i], color, seed=10 * c + i, mode=modes[i]) for i in range(5)
        ]
    return out


@pytest.fixture(scope="session")
def effnet_model(tiny_images):
    """EfficientNet-Lite0 (ImageNet weights, no FC layer) at 96 px with two imprinted classes."""
    torch.manual_seed(0)
    model = imprinting.create_model("efficientnet_lite0", dim=None, image_size=EFFNET_SIZE, unknown_threshold=0.2)
    model.imprint("red", tiny_images["red"][:3])
    model.imprint("green", tiny_images["green"][:3])
    return model


@pytest.fixture(scope="session")
def effnet_export(effnet_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "effnet"
    export(effnet_model, out)
    return out


@pytest.fixture(scope="session")
def conv4_model(tiny_images):
    """The small ConvNet (random weights, 1-channel 28x28), 32-d FC, per-class scale, two
    trained base classes and one imprinted class."""
    torch.manual_seed(0)
    model = imprinting.create_model(
        "conv4", dim=32, pretrained=False, class_names=["base_a", "base_b"], per_class_scale=True
    ).eval()
    with torch.no_grad():
        model.classifier.scale.copy_(torch.tensor([8.0, 12.0]))
        # non-trivial batch-norm statistics, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    model.imprint("blue", tiny_images["blue"][:2])
    return model


@pytest.fixture(scope="session")
def conv4_export(conv4_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "conv4"
    export(conv4_model, out, quantize=True)
    return out


# -- running code without PyTorch ------------------------------------------------------
TORCH_BLOCKER = """
import importlib.abc, sys

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ImportError(f"torch-free check: something imported {name!r}")

sys.meta_path.insert(0, _NoTorch())
"""

# Registers ``imprinting`` as a bare package so that ``imprinting.lite`` is imported without
# running ``imprinting/__init__.py`` (which imports the PyTorch model).
STUB_PARENT = """
import types
_pkg = types.ModuleType("imprinting")
_pkg.__path__ = [{src!r}]
sys.modules["imprinting"] = _pkg
"""


def _run_without_torch(code: str, cwd: Path | None = None, stub_parent: bool = False, timeout: int = 120):
    """Run ``code`` in a fresh interpreter in which importing torch raises ImportError."""
    prelude = TORCH_BLOCKER + (STUB_PARENT.format(src=str(SRC)) if stub_parent else "")
    script = prelude + "\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def run_without_torch():
    """``run(code, cwd=None, stub_parent=False)``: run code in a fresh interpreter where
    importing torch, torchvision or timm raises ImportError; returns the CompletedProcess."""
    return _run_without_torch


@pytest.fixture(scope="session")
def image_maker():
    """``make(path, size, color, seed, mode)`` writes a small generated image."""
    return make_image
