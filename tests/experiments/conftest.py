"""Fixtures of the experiment tests: the synthetic low-shot data set and its base model."""

import pytest

from experiments_fixtures import tiny_lowshot
from imprinting import protocol
from imprinting.train import TrainConfig


@pytest.fixture(scope="session")
def lowshot():
    return tiny_lowshot()


@pytest.fixture(scope="session")
def lowshot_base(lowshot):
    """The base model (FC 8 + cosine classifier) trained on the base classes."""
    return protocol.train_base(lowshot, dim=8, cfg=TrainConfig(epochs=15, lr=1e-3, batch_size=16))[0]
