"""The export command's orchestration: ``export`` writes the folder described in
``imprinting.export`` (refusing to overwrite an export by accident), from the graphs
(``graphs``), the classes file (``classes``) and, when asked, the int8 graphs
(``quantize``), and writes the manifest last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

import imprinting
from imprinting.export.base import ExportError, check_exportable
from imprinting.export.classes import export_classes
from imprinting.export.graphs import write_graphs
from imprinting.export.quantize import QUANTIZATION_METHOD, quantization_report, quantize_graph
from imprinting.lite import format as fmt
from imprinting.model import ImprintModel
from imprinting.onnx_io import OPSET


def export(
    model: ImprintModel,
    out_dir: str | os.PathLike,
    quantize: bool = False,
    overwrite: bool = False,
    check_images: Sequence | None = None,
    opset: int = OPSET,
) -> dict:
    """Write the export folder for ``model`` (see ``imprinting.export``'s docstring); returns the manifest.

    ``overwrite=False`` refuses a folder that already holds an export: its classes file may
    hold classes taught on a device. ``check_images`` (paths or PIL images) are used to
    measure the int8 graphs against the float ones when ``quantize`` is set.
    """
    check_exportable(model)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    existing = [n for n in (fmt.MANIFEST, fmt.CLASSES, fmt.EMBEDDER) if (out / n).exists()]
    if existing and not overwrite:
        raise ExportError(
            f"{out} already holds an export ({', '.join(existing)}); its classes may have been taught on a "
            "device: import them first (imprinting.export.import_classes) or overwrite on purpose"
        )
    if opset < 17:
        raise ExportError(f"opset {opset} is too old; use 17 or newer")
    out.mkdir(parents=True, exist_ok=True)
    # The manifest is written last: a folder without one is an unfinished export. Graphs of
    # an overwritten export that this one does not write again must not linger.
    for stale in (fmt.MANIFEST, fmt.MODEL, fmt.EMBEDDER_INT8, fmt.MODEL_INT8):
        if (out / stale).exists():
            (out / stale).unlink()
    pre = model.preprocess
    eid = model.embedder_id()
    common = {"imprinting_format": fmt.EXPORT_FORMAT, "preprocess": json.dumps(pre.to_dict()), "embedder_id": eid}
    files = {"manifest": fmt.MANIFEST, "preprocess": fmt.PREPROCESS, "classes": fmt.CLASSES}
    graphs, verify = write_graphs(model, out, common, opset)  # checked against PyTorch, or ExportError
    files.update(graphs)
    export_classes(model, out / fmt.CLASSES)
    fmt.write_json(out / fmt.PREPROCESS, {"format": fmt.EXPORT_FORMAT, "version": fmt.EXPORT_VERSION, **pre.to_dict()})
    manifest = {
        "format": fmt.EXPORT_FORMAT,
        "version": fmt.EXPORT_VERSION,
        "created_by": f"imprinting {imprinting.__version__}, torch {torch.__version__}",
        "backbone": model.spec.backbone,
        "config": model.spec.to_config(),
        "embedding_dim": model.embedder.dim,
        "embedder_id": eid,
        "opset": opset,
        "input": {"name": "image", "shape": ["batch", pre.in_chans, pre.image_size, pre.image_size], "dtype": "float32"},
        "files": files,
        "classes_at_export": model.num_classes,
        "verify": verify,
        "quantization": None,
    }
    if quantize:
        quantize_graph(out / fmt.EMBEDDER, out / fmt.EMBEDDER_INT8)
        files["embedder_int8"] = fmt.EMBEDDER_INT8
        if model.num_classes:
            quantize_graph(out / fmt.MODEL, out / fmt.MODEL_INT8)
            files["model_int8"] = fmt.MODEL_INT8
        fmt.write_json(out / fmt.MANIFEST, manifest)  # quantization_report reads it
        manifest["quantization"] = {
            "method": QUANTIZATION_METHOD,
            **quantization_report(out, check_images),
        }
    manifest["sizes"] = {k: (out / v).stat().st_size for k, v in files.items() if k != "manifest"}
    fmt.write_json(out / fmt.MANIFEST, manifest)
    return manifest
