"""The classes file side of the export: the model's classes written as ``classes.npz``
(the file the lite runtime opens and saves, ``imprinting.classes_file``), an export
folder's classes rewritten (``imprint export --classes-only``), and classes taught on a
device read back into the PyTorch model.
"""

from __future__ import annotations

import os
from pathlib import Path

from imprinting.classes_file import ClassesData
from imprinting.errors import ExportFormatError, UserError
from imprinting.export.base import ExportError, check_exportable
from imprinting.lite import format as fmt
from imprinting.model import ImprintModel


def embedder_id(model: ImprintModel) -> str:
    """A fingerprint (sha256) of the embedder's weights (``imprinting.spec.fingerprint``):
    classes imprinted with one embedder are meaningless for another, and the classes file
    records which one made them."""
    return model.embedder_id()


def classes_data(model: ImprintModel) -> ClassesData:
    """The model's classes in the classes file's form."""
    check_exportable(model)
    return ClassesData.from_table(model.classes, model.unknown_threshold, model.embedder_id(), conformal=model.conformal,
                                  threshold_follows=model.threshold_follows)


def export_classes(model: ImprintModel, path: str | os.PathLike) -> Path:
    """Write the model's classes file (``path`` is a folder or a .npz file), atomically."""
    path = Path(path)
    if path.is_dir():
        path = path / fmt.CLASSES
    fmt.save_classes(classes_data(model), path)
    return path


def update_classes(model: ImprintModel, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Rewrite an export folder's classes file from ``model`` (``imprint export --classes-only``).

    Refuses a folder exported from another embedder, and, without ``force``, a classes file
    holding classes the model lacks (they may have been taught on a device: import them first).
    """
    out = Path(out_dir)
    manifest = fmt.read_manifest(out)
    if manifest.get("embedder_id") != model.embedder_id():
        raise ExportError(f"{out} was exported from another embedder than this model's")
    if (out / fmt.CLASSES).exists() and not force:
        lost = [n for n in fmt.load_classes(out / fmt.CLASSES).class_names if not model.has_class(n)]
        if lost:
            shown = ", ".join(map(repr, lost[:5])) + (" ..." if len(lost) > 5 else "")
            raise ExportError(f"{out / fmt.CLASSES} has {len(lost)} classes that the model lacks ({shown}); "
                              "import them first (imprinting.export.import_classes) or use --force")
    return export_classes(model, out)


def import_classes(model: ImprintModel, source: str | os.PathLike, check_embedder: bool = True) -> ImprintModel:
    """Replace the model's classes with those of a classes file (or an export folder).

    Names, class vectors, scale, unknown threshold, sums and counts all come from the file,
    so imprinted classes keep taking examples (``add_examples``) where the device left off,
    and base classes stay base classes. The embedder is not touched. With
    ``check_embedder`` (the default), a file made with another embedder is refused.
    Returns the model.
    """
    check_exportable(model)
    data = fmt.load_classes(source)
    where = Path(source)
    if data.dim != model.embedder.dim:
        raise ExportFormatError(f"{where}: {data.dim}-d classes for a model with {model.embedder.dim}-d embeddings")
    if check_embedder and data.embedder_id and data.embedder_id != model.embedder_id():
        raise ExportFormatError(
            f"{where}: the classes were made with another embedder than this model's "
            "(different weights); pass check_embedder=False to import them anyway"
        )
    try:
        model.set_classes(data.table())
    except UserError as exc:
        raise ExportFormatError(f"{where}: {exc}") from None
    model.unknown_threshold, model.conformal = data.unknown_threshold, data.conformal
    model.threshold_follows = data.threshold_follows  # the table brought its calibration examples
    return model
