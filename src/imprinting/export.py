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
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from imprinting.classes_file import ClassesData
from imprinting.errors import ExportFormatError, UserError
from imprinting.files import atomic_write
from imprinting.lite import format as fmt
from imprinting.model import ImprintModel
from imprinting.onnx_io import OPSET, onnx_export, quiet

# onnxruntime vs PyTorch on the export's check input; larger means a broken export.
VERIFY_TOLERANCE = 1e-4
QUANTIZATION_METHOD = (
    "onnxruntime quantize_dynamic: uint8 weights, activations quantized to uint8 at run time; "
    "the stem and depthwise convolutions and the class matrix stay float32"
)


class ExportError(UserError):
    """A model that cannot be exported, or an export folder that would be overwritten."""


# -- the classes ---------------------------------------------------------------------
def embedder_id(model: ImprintModel) -> str:
    """A fingerprint (sha256) of the embedder's weights (``imprinting.spec.fingerprint``):
    classes imprinted with one embedder are meaningless for another, and the classes file
    records which one made them."""
    return model.embedder_id()


def _check_exportable(model: ImprintModel) -> None:
    if model.spec.classifier != "cosine":
        raise ExportError(
            "only models with the cosine classifier can be exported (the lite runtime computes s * cos(w, x)); "
            f"this one has the {model.spec.classifier} classifier"
        )
    if not model.embedder.normalize:
        raise ExportError("only models whose embedder L2-normalizes its output can be exported")


def classes_data(model: ImprintModel) -> ClassesData:
    """The model's classes in the classes file's form."""
    _check_exportable(model)
    return ClassesData.from_table(model.classes, model.unknown_threshold, model.embedder_id(), conformal=model.conformal)


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
    _check_exportable(model)
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
    return model


# -- ONNX ----------------------------------------------------------------------------
def _logits_graph(embedder_path: Path, model: ImprintModel, path: Path, metadata: dict) -> None:
    """model.onnx: the embedder graph followed by ``logits = scale * (embedding @ T.T)`` (T: the
    templates as constants), or a closed-form head's scores from its rows; nodes appended to
    the exported embedder, not traced again."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    embedder = onnx.load(str(embedder_path))
    table = model.classes
    templates, scale = table.templates, table.scale
    d, c = templates.shape[1], templates.shape[0]
    if table.head is None:
        nodes = [helper.make_node("MatMul", ["embedding", "class_templates_t"], ["cosine"], name="class_cosine"),
                 helper.make_node("Mul", ["cosine", "class_scale"], ["logits"], name="class_scale_mul")]
        constants = {"class_templates_t": np.ascontiguousarray(templates.T), "class_scale": scale}
    else:  # the closed-form head: temperature * ((e - centre) @ W.T + b), its rows as constants
        w, b = table.head_rows()
        nodes = [helper.make_node("Sub", ["embedding", "head_centre"], ["centred"], name="head_centre_sub"),
                 helper.make_node("MatMul", ["centred", "head_w_t"], ["head_dot"], name="head_matmul"),
                 helper.make_node("Add", ["head_dot", "head_b"], ["head_scores"], name="head_bias"),
                 helper.make_node("Mul", ["head_scores", "head_temperature"], ["logits"], name="head_temperature_mul")]
        constants = {"head_centre": table.head.centre.astype(np.float32), "head_w_t": np.ascontiguousarray(w.T),
                     "head_b": np.ascontiguousarray(b), "head_temperature": np.array([table.head.temperature], np.float32)}
    head = helper.make_graph(
        nodes, "class_scores",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c])],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    head_model = helper.make_model(head, opset_imports=list(embedder.opset_import), ir_version=embedder.ir_version)
    merged = compose.merge_models(embedder, head_model, io_map=[("embedding", "embedding")])
    opsets = {}
    for op in merged.opset_import:  # merge_models lists the shared opsets twice
        opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets.items())
    merged.producer_name = "imprinting"
    del merged.metadata_props[:]  # merge_models kept the embedder's
    for key, value in metadata.items():
        merged.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(merged)
    atomic_write(path, lambda tmp: onnx.save(merged, tmp))


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = _session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _quantize_excluded(graph) -> list[str]:
    """Nodes kept in float: the stem convolution (on the raw image), depthwise convolutions
    (few weights, and the most sensitive to int8 activations), and the class matrix."""
    convs = [n for n in graph.node if n.op_type == "Conv"]
    keep = [convs[0].name] if convs else []
    keep += [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    producers = {o: n for n in graph.node for o in n.output}
    for out in graph.output:
        last = producers.get(out.name)
        if last is not None and out.name == "logits":
            keep += [producers[i].name for i in last.input if i in producers and producers[i].op_type in ("MatMul", "Gemm")]
    return keep


def _quantize(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = _quantize_excluded(onnx.load(str(src)).graph)

    def write(tmp: str) -> None:
        with quiet():
            quantize_dynamic(str(src), tmp, weight_type=QuantType.QUInt8, nodes_to_exclude=exclude)

    atomic_write(dst, write)


def quantization_report(out_dir: str | os.PathLike, images: Sequence | None = None, batch_size: int = 32) -> dict:
    """How far the int8 graphs are from the float ones on ``images`` (paths or PIL images;
    without them, on random noise, which says less): cosine between float and int8
    embeddings, and, with classes, how often the top-1 class agrees."""
    from imprinting.lite.runtime import LiteModel

    out = Path(out_dir)
    manifest = fmt.read_manifest(out)
    files = manifest["files"]
    recipe = fmt.read_preprocess(out)
    lite = LiteModel(out)
    if images:
        x = np.concatenate([lite.preprocess(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
        source = f"{len(images)} images"
    else:
        size, chans = recipe["image_size"], recipe["in_chans"]
        x = np.random.default_rng(0).standard_normal((16, chans, size, size)).astype(np.float32)
        source = "16 random-noise inputs (pass images for a meaningful figure)"
    emb_f = np.concatenate([_run(out / files["embedder"], x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    emb_q = np.concatenate([_run(out / files["embedder_int8"], x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    cos = np.sum(fmt.normalize_rows(emb_f) * fmt.normalize_rows(emb_q), axis=1)
    report = {
        "measured_on": source,
        "embedding_cosine_mean": round(float(cos.mean()), 5),
        "embedding_cosine_min": round(float(cos.min()), 5),
    }
    if lite.num_classes:
        top_f = lite.logits(emb_f).argmax(axis=1)
        top_q = lite.logits(emb_q).argmax(axis=1)
        report["top1_agreement"] = round(float((top_f == top_q).mean()), 5)
    return report


def export(
    model: ImprintModel,
    out_dir: str | os.PathLike,
    quantize: bool = False,
    overwrite: bool = False,
    check_images: Sequence | None = None,
    opset: int = OPSET,
) -> dict:
    """Write the export folder for ``model`` (see the module docstring); returns the manifest.

    ``overwrite=False`` refuses a folder that already holds an export: its classes file may
    hold classes taught on a device. ``check_images`` (paths or PIL images) are used to
    measure the int8 graphs against the float ones when ``quantize`` is set.
    """
    import imprinting

    _check_exportable(model)
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
    was_training = model.training
    model.eval()
    try:
        g = torch.Generator().manual_seed(0)
        example = torch.randn(2, pre.in_chans, pre.image_size, pre.image_size, generator=g)
        common = {"imprinting_format": fmt.EXPORT_FORMAT, "preprocess": json.dumps(pre.to_dict()), "embedder_id": eid}
        files = {"manifest": fmt.MANIFEST, "preprocess": fmt.PREPROCESS, "classes": fmt.CLASSES, "embedder": fmt.EMBEDDER}
        onnx_export(model.embedder, example, out / fmt.EMBEDDER, "embedding", common, opset)
        check = torch.randn(3, pre.in_chans, pre.image_size, pre.image_size, generator=g)
        with torch.no_grad():
            emb = model.embedder(check)
            want_emb, table = emb.numpy(), model.classes  # a head's scores: compared relative to their size
            want_logits = model.classifier(emb).numpy() if table.head is None else table.logits(None, want_emb)
            size = 1.0 if table.head is None else max(1.0, float(np.abs(want_logits).max()))
        verify = {"embedder_max_abs_diff": float(np.abs(_run(out / fmt.EMBEDDER, check.numpy()) - want_emb).max())}
        if model.num_classes:
            meta = {**common, "class_names": json.dumps(model.class_names, ensure_ascii=False)}
            _logits_graph(out / fmt.EMBEDDER, model, out / fmt.MODEL, meta)
            files["model"] = fmt.MODEL
            verify["model_max_abs_diff"] = float(np.abs(_run(out / fmt.MODEL, check.numpy()) - want_logits).max()) / size
    finally:
        model.train(was_training)
    bad = {k: v for k, v in verify.items() if not v <= VERIFY_TOLERANCE}
    if bad:
        raise ExportError(f"onnxruntime disagrees with PyTorch beyond {VERIFY_TOLERANCE}: {bad}")
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
        _quantize(out / fmt.EMBEDDER, out / fmt.EMBEDDER_INT8)
        files["embedder_int8"] = fmt.EMBEDDER_INT8
        if model.num_classes:
            _quantize(out / fmt.MODEL, out / fmt.MODEL_INT8)
            files["model_int8"] = fmt.MODEL_INT8
        fmt.write_json(out / fmt.MANIFEST, manifest)  # quantization_report reads it
        manifest["quantization"] = {
            "method": QUANTIZATION_METHOD,
            **quantization_report(out, check_images),
        }
    manifest["sizes"] = {k: (out / v).stat().st_size for k, v in files.items() if k != "manifest"}
    fmt.write_json(out / fmt.MANIFEST, manifest)
    return manifest


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
