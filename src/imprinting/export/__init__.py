"""Export a model for edge devices: ONNX graphs, the classes, the preprocessing recipe.

``export(model, out_dir)`` writes the folder that ``imprinting.lite`` opens (the layout and
the classes format are described in ``imprinting.lite.format``):

* ``embedder.onnx``: image (N, C, H, W) -> L2-normalized embedding (N, D), dynamic batch.
  The classes are not in the graph, so a device can add classes by imprinting.
* ``model.onnx``: image -> logits (N, C) with the classes at export time baked in, for
  devices that never learn (class names in the graph's metadata ``class_names``).
* ``classes.npz``: class vectors, scale, names, unknown threshold and per-class float64
  sums; the same file the lite runtime saves, and ``import_classes`` reads back.
* ``preprocess.json``: resize, crop and normalization; ``manifest.json``: what is where.
* with ``quantize=True``, ``embedder.int8.onnx`` and ``model.int8.onnx`` by onnxruntime's
  dynamic quantization (int8 weights, activations quantized at run time), with the change
  against the float graphs measured and written into the manifest.

Each graph is checked against PyTorch with onnxruntime before the export is finished.

One module per concept; this package only re-exports the public names:

* ``base``: ``ExportError`` and what makes a model exportable (the contract the others import).
* ``classes``: the classes file side (``classes_data``, ``export_classes``,
  ``update_classes``, ``import_classes``, ``embedder_id``).
* ``graphs``: the ONNX graphs: the logits graph appended to the embedder's, and their
  verification against PyTorch with onnxruntime.
* ``quantize``: the int8 graphs and ``quantization_report``.
* ``folder``: the export command's orchestration, ``export`` writing the folder and its manifest.

The ONNX export primitive (tracing a module) is ``imprinting.onnx_io``.
"""

from __future__ import annotations

from imprinting.export.base import ExportError
from imprinting.export.classes import classes_data, embedder_id, export_classes, import_classes, update_classes
from imprinting.export.folder import export
from imprinting.export.quantize import quantization_report

__all__ = [
    "ExportError",
    "classes_data",
    "embedder_id",
    "export",
    "export_classes",
    "import_classes",
    "update_classes",
    "quantization_report",
]
