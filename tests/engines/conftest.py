"""Real JPEGs for the engine tests (skipped with the reason when the data is absent)."""

from __future__ import annotations

import pytest

from conftest import SHARED_DATA


@pytest.fixture(scope="session")
def flowers_jpegs() -> list:
    folder = SHARED_DATA / "flowers102" / "flowers-102" / "jpg"
    files = sorted(folder.glob("*.jpg"))[::400][:16] if folder.is_dir() else []
    if len(files) < 8:
        pytest.skip(f"Flowers-102 JPEGs not found at {folder} (../shared/data beside the checkout)")
    return files


@pytest.fixture(scope="session")
def cub_jpegs() -> list:
    folder = SHARED_DATA / "cub" / "CUB_200_2011" / "images"
    files = sorted(folder.glob("*/*.jpg"))[::1500][:8] if folder.is_dir() else []
    if len(files) < 4:
        pytest.skip(f"CUB JPEGs not found at {folder} (../shared/data beside the checkout)")
    return files
