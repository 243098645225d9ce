"""What every part of the export shares: its error, and what makes a model exportable.

The other modules of ``imprinting.export`` import these from here (never from the
package's ``__init__``), so no submodule depends on the package that re-exports it.
"""

from __future__ import annotations

from imprinting.errors import UserError
from imprinting.model import ImprintModel


class ExportError(UserError):
    """A model that cannot be exported, or an export folder that would be overwritten."""


def check_exportable(model: ImprintModel) -> None:
    """Refuse a model the lite runtime could not reproduce: it computes ``s * cos(w, x)`` on
    L2-normalized embeddings."""
    if model.spec.classifier != "cosine":
        raise ExportError(
            "only models with the cosine classifier can be exported (the lite runtime computes s * cos(w, x)); "
            f"this one has the {model.spec.classifier} classifier"
        )
    if not model.embedder.normalize:
        raise ExportError("only models whose embedder L2-normalizes its output can be exported")
