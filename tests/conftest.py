"""Shared fixtures: the real data sets (skipped with the reason when absent) and tiny images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import make_image, run_cli

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Feature caches of tests go to a temporary folder, never ~/.cache; the engine default
    goes back to none after each test."""
    monkeypatch.setenv("IMPRINTING_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.manual_seed(0)
    yield
    # `imprint --engine X` run in-process sets the process default; it must not outlive its test
    from imprinting import engines

    engines.set_default(engine=None, precision=None)


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """A folder of 3 class folders (red, green, blue), 4 small images each."""
    root = tmp_path / "classes"
    for name, color in {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}.items():
        for i in range(4):
            make_image(root / name / f"{i}.png", color, seed=i)
    return root


@pytest.fixture
def tiny_model(tmp_path, tiny_folder):
    """A model file made by ``imprint create --from-folder`` on ``tiny_folder`` (conv4, random, 16-d)."""
    path = tmp_path / "m.safetensors"
    result = run_cli("create", path, "--backbone", "conv4", "--random-init", "--dim", "16", "--from-folder", tiny_folder)
    assert result.exit_code == 0, result.output
    return path
