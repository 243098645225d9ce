"""Edge export benchmark: export size, embedding latency (onnxruntime vs PyTorch), time to
imprint a class of 5 images with the lite runtime, and int8 vs float accuracy.

For EfficientNet-Lite0 (ImageNet weights, no FC layer: the transfer setting) and the small
ConvNet (conv4; random weights, as the repository has no trained one):

* sizes of embedder.onnx, model.onnx (with the benchmark's classes), the int8 graphs and
  classes.npz;
* per-image embedding latency, batch 1 (median of repeated runs) and batch 32 (per image),
  onnxruntime float and int8 vs PyTorch eager, same number of threads;
* time for ``LiteModel.imprint`` to teach a class from 5 image files (decode, preprocess,
  embed, sum), median over 10 classes, vs ``ImprintModel.imprint``;
* accuracy with the float and the int8 embedder: Flowers-102 transfer for EfficientNet-Lite0
  (imprint the 102 classes from n=5 training images, draw 0 of seed 0 as in
  ``imprint transfer``; top-1 on the 6,149 test images), and for conv4 659-way 5-shot on the
  Omniglot evaluation characters (drawers 1-10 train, 11-20 test).

Usage::

    python benchmarks/bench_lite.py --data-root ../shared/data --out results/bench_lite \\
        [--image-size 224] [--accuracy-image-size 160] [--threads 2] [--skip-accuracy]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import imprinting
from imprinting.export import export
from imprinting.lite import LiteModel, load
from imprinting.lite import format as fmt


def _median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def latency(model, folder: Path, threads: int, repeats: int = 30) -> dict:
    """Per-image embedding latency (ms), batch 1 and batch 32, onnxruntime float/int8 vs PyTorch."""
    pre = model.preprocess
    rng = np.random.default_rng(0)
    x32 = rng.standard_normal((32, pre.in_chans, pre.image_size, pre.image_size)).astype(np.float32)
    x1 = x32[:1]
    out = {}
    with torch.inference_mode():
        t1, t32 = torch.from_numpy(x1), torch.from_numpy(x32)
        out["pytorch_b1_ms"] = _median_ms(lambda: model.embed(t1), repeats)
        out["pytorch_b32_ms_per_image"] = _median_ms(lambda: model.embed(t32), max(3, repeats // 10)) / 32
    for tag, quantized in (("onnx_float", False), ("onnx_int8", True)):
        lite = load(folder, quantized=quantized, threads=threads)
        out[f"{tag}_b1_ms"] = _median_ms(lambda: lite.embed_array(x1), repeats)
        out[f"{tag}_b32_ms_per_image"] = _median_ms(lambda: lite.embed_array(x32), max(3, repeats // 10)) / 32
    return {k: round(v, 2) for k, v in out.items()}


def imprint_time(model, folder: Path, classes: list[list[Path]], threads: int) -> dict:
    """Median seconds to teach one class from 5 files: lite float, lite int8, PyTorch."""
    out = {}
    for tag, quantized in (("lite_float", False), ("lite_int8", True)):
        lite = load(folder, quantized=quantized, threads=threads)
        lite.embed(classes[0])  # warm-up
        times = []
        for i, files in enumerate(classes):
            t0 = time.perf_counter()
            lite.imprint(f"bench_{i}", files)
            times.append(time.perf_counter() - t0)
        out[f"{tag}_ms"] = round(1000 * statistics.median(times), 1)
    m = _copy(model)
    m.embed_images(classes[0])
    times = []
    for i, files in enumerate(classes):
        t0 = time.perf_counter()
        m.imprint(f"bench_{i}", files)
        times.append(time.perf_counter() - t0)
    out["pytorch_ms"] = round(1000 * statistics.median(times), 1)
    return out


def _copy(model):
    import copy

    return copy.deepcopy(model)


def accuracy(folder: Path, train_files, train_labels, test_files, test_labels, names, threads: int,
             batch: int = 64) -> dict:
    """Top-1 (%) of imprinted classes with the float and the int8 embedder. Images are decoded
    and preprocessed once; both embedders see the same arrays."""
    manifest = fmt.read_manifest(folder)
    dim = manifest["embedding_dim"]
    empty = folder / "no_classes.npz"  # start from no classes
    fmt.save_classes(fmt.ClassesData([], np.zeros((0, dim)), np.array([10.0]), np.zeros((0, dim)), np.zeros(0), dim,
                                     embedder_id=manifest["embedder_id"]), empty)
    lites = {"float": LiteModel(folder, threads=threads, classes=empty),
             "int8": LiteModel(folder, quantized=True, threads=threads, classes=empty)}
    pre = lites["float"]

    def embed_all(files):
        out = {k: [] for k in lites}
        for i in range(0, len(files), batch):
            x = pre.preprocess(files[i : i + batch])
            for k, lite in lites.items():
                out[k].append(lite.embed_array(x))
        return {k: np.concatenate(v) for k, v in out.items()}

    t0 = time.perf_counter()
    train = embed_all(train_files)
    for k, lite in lites.items():
        labels = np.asarray(train_labels)
        for c in sorted(set(train_labels)):
            lite.imprint_embeddings(train[k][labels == c], names[c])
    test = embed_all(test_files)
    result = {"seconds": round(time.perf_counter() - t0, 1), "train_images": len(train_files),
              "test_images": len(test_files), "classes": len(set(train_labels))}
    want = np.asarray([names[y] for y in test_labels])
    for k, lite in lites.items():
        pred = np.asarray(lite.class_names)[lite.logits(test[k]).argmax(axis=1)]
        result[f"top1_{k}"] = round(100 * float((pred == want).mean()), 2)
    agree = (lites["float"].logits(test["float"]).argmax(1) == lites["int8"].logits(test["int8"]).argmax(1)).mean()
    result["top1_agreement"] = round(100 * float(agree), 2)
    result["top1_change"] = round(result["top1_int8"] - result["top1_float"], 2)
    return result


def sizes(folder: Path) -> dict:
    manifest = fmt.read_manifest(folder)
    return {name: round((folder / name).stat().st_size / 1e6, 3) for key, name in manifest["files"].items()
            if key != "manifest"}


def flowers_data(root: Path, n: int = 5, seed: int = 0):
    from imprinting.data.flowers import read_flowers102
    from imprinting.data.splits import shot_draws

    train = read_flowers102(root, "train", download=False)
    test = read_flowers102(root, "test", download=False)
    draws = shot_draws(train, sorted(set(train.labels)), shots=(n,), draws=1, seed=seed)
    idx = draws.take(0, n)
    return ([train.paths[i] for i in idx], [train.labels[i] for i in idx], test.paths, test.labels,
            train.class_names, train)


def omniglot_data(root: Path, n: int = 5):
    from imprinting.data.omniglot import omniglot_train_test, read_omniglot
    from imprinting.data.splits import shot_draws

    images = read_omniglot(root, "evaluation")
    train, test = omniglot_train_test(images, 10)
    draws = shot_draws(train, sorted(set(train.labels)), shots=(n,), draws=1, seed=0)
    idx = draws.take(0, n)
    return ([train.paths[i] for i in idx], [train.labels[i] for i in idx], test.paths, test.labels,
            train.class_names, train)


def five_per_class(image_set, classes: int = 10) -> list[list[Path]]:
    by_class: dict[int, list[Path]] = {}
    for p, y in zip(image_set.paths, image_set.labels):
        by_class.setdefault(y, []).append(p)
    return [files[:5] for _, files in sorted(by_class.items())[:classes]]


def _thin(data, limit: int):
    train_files, train_labels, test_files, test_labels, names, train_set = data
    if limit and len(test_files) > limit:
        step = -(-len(test_files) // limit)
        test_files, test_labels = test_files[::step], test_labels[::step]
    return train_files, train_labels, test_files, test_labels, names, train_set


def bench_one(name: str, model, data, work: Path, threads: int, skip_accuracy: bool, acc_model=None) -> dict:
    train_files, train_labels, test_files, test_labels, names, train_set = data
    # model.onnx holds the benchmark's classes: imprint them (PyTorch) before exporting
    by_class: dict[int, list[Path]] = {}
    for p, y in zip(train_files, train_labels):
        by_class.setdefault(y, []).append(p)
    for c, files in sorted(by_class.items()):
        model.imprint(names[c], files)
    folder = work / name
    t0 = time.perf_counter()
    export(model, folder, quantize=True, check_images=train_files[:32])
    row = {"model": name, "image_size": model.preprocess.image_size, "embedding_dim": model.embedder.dim,
           "export_seconds": round(time.perf_counter() - t0, 1)}
    row["sizes_mb"] = sizes(folder)
    row["latency"] = latency(model, folder, threads)
    row["imprint_5_images"] = imprint_time(model, folder, five_per_class(train_set), threads)
    if not skip_accuracy:
        acc_folder = folder
        if acc_model is not None:
            acc_folder = work / f"{name}_acc"
            export(acc_model, acc_folder, quantize=True)
        row["accuracy"] = {"image_size": (acc_model or model).preprocess.image_size,
                           **accuracy(acc_folder, train_files, train_labels, test_files, test_labels, names, threads)}
    return row


def markdown(rows: list[dict], prov: dict) -> str:
    lines = [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in prov.items()]
    lines += ["", "| model | crop | embedder.onnx | int8 | model.onnx | classes.npz | "
              "PyTorch b1 | ORT float b1 | ORT int8 b1 | PyTorch b32/img | ORT float b32/img | ORT int8 b32/img | "
              "imprint 5 imgs lite float | lite int8 | PyTorch |",
              "|" + "---|" * 15]
    for r in rows:
        s, lat, imp = r["sizes_mb"], r["latency"], r["imprint_5_images"]
        lines.append(
            f"| {r['model']} | {r['image_size']} | {s['embedder.onnx']:.2f} MB | {s['embedder.int8.onnx']:.2f} MB | "
            f"{s.get('model.onnx', 0):.2f} MB | {s['classes.npz'] * 1000:.0f} kB | "
            f"{lat['pytorch_b1_ms']:.2f} ms | {lat['onnx_float_b1_ms']:.2f} ms | {lat['onnx_int8_b1_ms']:.2f} ms | "
            f"{lat['pytorch_b32_ms_per_image']:.2f} ms | {lat['onnx_float_b32_ms_per_image']:.2f} ms | "
            f"{lat['onnx_int8_b32_ms_per_image']:.2f} ms | "
            f"{imp['lite_float_ms']:.0f} ms | {imp['lite_int8_ms']:.0f} ms | {imp['pytorch_ms']:.0f} ms |"
        )
    acc = [r for r in rows if "accuracy" in r]
    if acc:
        lines += ["", "| model | task | crop | classes | test images | top-1 float | top-1 int8 | change | "
                      "top-1 agreement |", "|" + "---|" * 9]
        for r in acc:
            a = r["accuracy"]
            lines.append(
                f"| {r['model']} | {r['task']} | {a['image_size']} | {a['classes']} | {a['test_images']} | "
                f"{a['top1_float']:.2f} % | {a['top1_int8']:.2f} % | {a['top1_change']:+.2f} | "
                f"{a['top1_agreement']:.2f} % |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("IMPRINTING_DATA", "../shared/data")))
    parser.add_argument("--out", type=Path, default=Path("results/bench_lite"))
    parser.add_argument("--image-size", type=int, default=224, help="EfficientNet crop for sizes and timings")
    parser.add_argument("--accuracy-image-size", type=int, default=160, help="EfficientNet crop for the accuracy run")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--test-limit", type=int, default=0, help="Use every k-th test image so that at most this "
                        "many remain (0: all; for smoke runs)")
    args = parser.parse_args()

    from imprinting.report import provenance

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # EfficientNet-Lite0: the classes of model.onnx are the 102 flowers imprinted from n=5
        data = _thin(flowers_data(args.data_root), args.test_limit)
        effnet = imprinting.create_model("efficientnet_lite0", dim=None, image_size=args.image_size)
        effnet_acc = None
        if args.accuracy_image_size != args.image_size:
            effnet_acc = imprinting.create_model("efficientnet_lite0", dim=None, image_size=args.accuracy_image_size)
        rows.append(bench_one("efficientnet_lite0", effnet, data, work, args.threads, args.skip_accuracy, effnet_acc))
        rows[-1]["task"] = "Flowers-102 transfer, 102 classes, n=5"
        print(json.dumps(rows[-1], indent=1), flush=True)
        # conv4 (random weights) on Omniglot evaluation characters
        data = _thin(omniglot_data(args.data_root), args.test_limit)
        torch.manual_seed(0)
        conv4 = imprinting.create_model("conv4", pretrained=False, dim=None)
        rows.append(bench_one("conv4 (random weights)", conv4, data, work, args.threads, args.skip_accuracy))
        rows[-1]["task"] = "Omniglot evaluation, 659-way 5-shot"
        print(json.dumps(rows[-1], indent=1), flush=True)
    import onnxruntime

    prov = provenance(
        threads=args.threads,
        onnxruntime=onnxruntime.__version__,
        load_average_at_start=round(load_start, 2),
        load_average_at_end=round(os.getloadavg()[0], 2),
        seconds_total=round(time.perf_counter() - t_start, 1),
    )
    text = "# Edge export benchmark\n\n" + markdown(rows, prov)
    args.out.mkdir(parents=True, exist_ok=True)
    fmt.write_json(args.out / "bench_lite.json", {"provenance": prov, "rows": rows})
    fmt.atomic_write(args.out / "bench_lite.md", lambda p: Path(p).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
