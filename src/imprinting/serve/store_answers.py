"""How the service answers a store that failed: 503 ``store_error``, saying what did not happen
and, for a write the database may still commit, how to check before retrying."""

from __future__ import annotations

from imprinting.serve.contract import StoreInDoubt, StoreUnavailable
from imprinting.serve.validation import ApiError


def store_error(detail: str, exc: BaseException | None = None, write: bool = True,
                check: str = "GET /classes shows the classes as the store holds them") -> ApiError:
    """503 ``store_error`` with ``Retry-After``: the store refused a call or cannot be reached;
    ``detail`` says what did not happen. A write the database did not answer in time
    (``StoreInDoubt``) may still be committed later, and the answer says so instead, with how
    to ``check`` before retrying."""
    if write and isinstance(exc, StoreInDoubt):
        detail = ("the store did not answer in time: this change may still be saved, whole, when it answers "
                  f"(check before retrying: {check})")
    retry = "2" if isinstance(exc, StoreUnavailable) or exc is None else "10"
    return ApiError(503, "store_error", detail + (f" ({exc})" if exc is not None else ""), headers={"Retry-After": retry})
