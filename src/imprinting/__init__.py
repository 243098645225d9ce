"""Low-shot learning with imprinted weights (Qi, Brown, Lowe, CVPR 2018).

The public names load on first use (PEP 562), so that ``imprinting.lite`` imports on a
device without PyTorch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ClassTable": "imprinting.classes",
    "ModelSpec": "imprinting.spec",
    "build_model": "imprinting.build",
    "create_head": "imprinting.build",
    "imprint_weights": "imprinting.imprint",
    "normalized_mean": "imprinting.imprint",
    "random_weights": "imprinting.imprint",
    "CosineClassifier": "imprinting.model",
    "Embedder": "imprinting.model",
    "ImprintModel": "imprinting.model",
    "LinearClassifier": "imprinting.model",
    "Prediction": "imprinting.model",
    "create_model": "imprinting.build",
    "create_backbone": "imprinting.backbones",
    "load": "imprinting.checkpoint",
    "save": "imprinting.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'imprinting' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
