"""Fixtures for the data readers: the real data sets in ../shared/data, when present."""

from __future__ import annotations

from pathlib import Path

import pytest

# The repository root is parents[2] (tests/data/conftest.py); the shared data is its sibling.
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found: {SHARED_DATA.resolve()} (real-data tests need it)")
    return SHARED_DATA.resolve()
