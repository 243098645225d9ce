"""``imprint serve``: an HTTP service that learns new classes from uploaded pictures.

``create_app(model_path, store_path, token=None)`` builds the FastAPI app; the classes
taught through it live in a SQLite store (``imprinting.serve.store``). The app's routes
are thin over ``imprinting.serve.service.Service``, which does the same without HTTP;
``serve.validation`` checks what clients send, ``serve.admission`` bounds what is let in at
once (memory), ``serve.middleware`` guards the requests, and ``serve.integrity`` holds the
checks a store makes of itself at start.
Importing this package is cheap: FastAPI is imported only when the app is built.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from imprinting.serve.app import create_app  # light package: FastAPI only when the app is built

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
