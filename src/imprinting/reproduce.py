"""Data preparation for the paper's experiments, kept under its old name for scripts that
import it (benchmarks/throughput.py): it lives in ``imprinting.experiments.data``; the
experiments themselves in ``imprinting.experiments``."""

from imprinting.experiments.data import (  # noqa: F401
    DATASETS,
    cached_pixels,
    limit_classes,
    prepare,
    prepare_omniglot,
    read_splits,
    training_square,
)
