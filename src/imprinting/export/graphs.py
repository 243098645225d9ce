"""The export's ONNX graphs: ``embedder.onnx`` traced from the embedder
(``imprinting.onnx_io``), ``model.onnx`` made by appending the class scores to it as
constants (merged, not traced again), and both checked against PyTorch with onnxruntime
before the export goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from imprinting.export.base import ExportError
from imprinting.files import atomic_write
from imprinting.lite import format as fmt
from imprinting.model import ImprintModel
from imprinting.onnx_io import onnx_export

# onnxruntime vs PyTorch on the export's check input; larger means a broken export.
VERIFY_TOLERANCE = 1e-4


def logits_graph(embedder_path: Path, model: ImprintModel, path: Path, metadata: dict) -> None:
    """model.onnx: the embedder graph followed by ``logits = scale * (embedding @ T.T)`` (T: the
    templates as constants), or a closed-form head's scores from its rows; nodes appended to
    the exported embedder, not traced again."""
    # optional: onnx (pip install 'imprinting[lite]')
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


def session(path: Path):
    import onnxruntime as ort  # optional: onnxruntime (pip install 'imprinting[lite]')

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_graph(path: Path, x: np.ndarray) -> np.ndarray:
    """The graph's first output on ``x``, by onnxruntime on the CPU."""
    sess = session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def write_graphs(model: ImprintModel, out: Path, common: dict, opset: int) -> tuple[dict, dict]:
    """Write ``embedder.onnx`` and, when the model has classes, ``model.onnx`` into ``out``
    (``common``: the metadata both carry), each checked against PyTorch with onnxruntime.

    Returns the files written (the manifest's names for them) and the largest differences
    found (the manifest's ``verify``); raises ``ExportError`` beyond ``VERIFY_TOLERANCE``.
    """
    pre = model.preprocess
    files = {"embedder": fmt.EMBEDDER}
    was_training = model.training
    model.eval()
    try:
        g = torch.Generator().manual_seed(0)
        example = torch.randn(2, pre.in_chans, pre.image_size, pre.image_size, generator=g)
        onnx_export(model.embedder, example, out / fmt.EMBEDDER, "embedding", common, opset)
        check = torch.randn(3, pre.in_chans, pre.image_size, pre.image_size, generator=g)
        with torch.no_grad():
            emb = model.embedder(check)
            want_emb, table = emb.numpy(), model.classes  # a head's scores: compared relative to their size
            want_logits = model.classifier(emb).numpy() if table.head is None else table.logits(None, want_emb)
            size = 1.0 if table.head is None else max(1.0, float(np.abs(want_logits).max()))
        verify = {"embedder_max_abs_diff": float(np.abs(run_graph(out / fmt.EMBEDDER, check.numpy()) - want_emb).max())}
        if model.num_classes:
            meta = {**common, "class_names": json.dumps(model.class_names, ensure_ascii=False)}
            logits_graph(out / fmt.EMBEDDER, model, out / fmt.MODEL, meta)
            files["model"] = fmt.MODEL
            verify["model_max_abs_diff"] = float(np.abs(run_graph(out / fmt.MODEL, check.numpy()) - want_logits).max()) / size
    finally:
        model.train(was_training)
    bad = {k: v for k, v in verify.items() if not v <= VERIFY_TOLERANCE}
    if bad:
        raise ExportError(f"onnxruntime disagrees with PyTorch beyond {VERIFY_TOLERANCE}: {bad}")
    return files, verify
