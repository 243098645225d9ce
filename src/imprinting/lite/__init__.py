"""Imprinting on devices without PyTorch: numpy, Pillow and onnxruntime only.

Open a folder written by ``imprint export`` (or ``imprinting.export.export``), teach it
classes from a few images, predict, and save the classes::

    from imprinting.lite import load

    model = load("lite_export")
    model.imprint("rose", ["rose1.jpg", "rose2.jpg"])
    print(model.predict(["photo.jpg"], k=3)[0].top)
    model.save()   # lite_export/classes.npz, which imprinting.export.import_classes reads

Nothing in this package imports torch.
"""

from imprinting.lite.format import ClassesData, ExportFormatError, load_classes, save_classes
from imprinting.lite.preprocess import to_array, to_batch
from imprinting.lite.runtime import LiteModel, Prediction, UnknownClassError, load

__all__ = [
    "ClassesData",
    "ExportFormatError",
    "LiteModel",
    "Prediction",
    "UnknownClassError",
    "load",
    "load_classes",
    "save_classes",
    "to_array",
    "to_batch",
]
