"""The export's int8 graphs: onnxruntime's dynamic quantization of the float graphs, with
the layers that int8 hurts most kept in float, and how far the int8 graphs are from the
float ones (``quantization_report``, written into the manifest).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from imprinting.export.graphs import run_graph
from imprinting.files import atomic_write
from imprinting.lite import format as fmt
from imprinting.lite.runtime import LiteModel
from imprinting.onnx_io import quiet

QUANTIZATION_METHOD = (
    "onnxruntime quantize_dynamic: uint8 weights, activations quantized to uint8 at run time; "
    "the stem and depthwise convolutions and the class matrix stay float32"
)


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


def quantize_graph(src: Path, dst: Path) -> None:
    """Write the int8 version of the graph ``src`` to ``dst`` (``QUANTIZATION_METHOD``), atomically."""
    # optional: onnx and onnxruntime (pip install 'imprinting[lite]')
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
    emb_f = np.concatenate([run_graph(out / files["embedder"], x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    emb_q = np.concatenate([run_graph(out / files["embedder_int8"], x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
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
