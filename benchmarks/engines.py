"""Inference engines: bare forward per engine, the pipeline from JPEGs, ``imprint predict``.

One run, one table (EfficientNet-Lite0 with its ImageNet weights,
``imprinting.create_model("efficientnet_lite0", dim=None)``, 224 px):

- bare forward, images/s: a batch of 32 ready tensors through each engine and precision
  available here (``imprinting.engines``), median of ``--repeats`` runs after a warm-up; and
  PyTorch eager in NCHW as the library ran it before engines. With each, the largest
  difference of its embeddings (L2-normalized features) to PyTorch eager's;
- the pipeline: ``imprinting.imprint.embed_files(model, files)`` with its defaults (the
  engine ``auto`` picks, decoding in threads) on ``--images`` real Flowers-102 JPEGs, and its
  ratio to the best bare forward, to the bare forward of its engine timed alternately with
  it (the load of a shared machine changes), and to PyTorch eager NCHW; decoding alone on one
  thread (no forward pass);
- ``imprint predict`` on 600 JPEGs: the wall time of the whole command (start-up included).

``--allocator`` instead measures the glibc allocator settings of
``imprinting.engines.allocator`` against none, each in a fresh process: whole-network
training steps (EfficientNet-Lite0 + 64-d FC + 100-class cosine classifier, RMSProp, batch
32, 96 px, as ``benchmarks/train_speed.py``): images/s, CPU seconds per image and minor page
faults per step.

Usage::

    .venv/bin/python benchmarks/engines.py --data-root ../shared/data
    .venv/bin/python benchmarks/engines.py --allocator
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from imprinting.report import markdown_table, provenance

ALLOCATORS = {
    "none (glibc defaults)": {},
    "mallopt M_MMAP_THRESHOLD=1 GiB, M_TRIM_THRESHOLD=2 GiB (the CLI's)": {"keep": True},
}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def flowers(root, count: int) -> list[Path]:
    folder = Path(root or os.environ.get("IMPRINTING_DATA", "../shared/data")) / "flowers102" / "flowers-102" / "jpg"
    files = sorted(folder.glob("*.jpg"))
    if len(files) < count:
        sys.exit(f"need {count} Flowers-102 JPEGs under {folder}")
    step = len(files) // count
    return files[::step][:count]


def bare_rows(model, repeats: int, batch: int = 32) -> list[dict]:
    from imprinting.engines import available_engines, engine_precisions
    from imprinting.engines.select import build_engine, embedding_difference

    module, size = model.embedder.backbone, model.preprocess.image_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        module.to(memory_format=torch.contiguous_format)
        reference = module.eval()(x)
        rows = [{"measure": f"bare forward, batch {batch}", "engine": "PyTorch eager, NCHW (the library before engines)",
                 "images_per_s": round(batch / timed(lambda: module(x), repeats), 1), "embedding_max_abs_diff": 0.0}]
    for name, reason in available_engines().items():
        if reason:
            rows.append({"measure": f"bare forward, batch {batch}", "engine": f"{name}: {reason}"})
            continue
        for precision in engine_precisions(name):
            engine = build_engine(name, module, (3, size, size), precision)
            rate = batch / timed(lambda: engine.run(x), repeats)
            rows.append({"measure": f"bare forward, batch {batch}", "engine": engine.describe(),
                         "images_per_s": round(rate, 1),
                         "embedding_max_abs_diff": float(f"{embedding_difference(engine.run(x), reference):.2g}")})
    return rows


def pipeline_rows(model, files: list[Path], repeats: int, best: tuple[float, float], eager: float) -> list[dict]:
    """The pipeline, and its engine's bare forward timed alternately with it (on a shared
    machine the load changes between the two tables' rows). ``best``: the fastest bare
    forward within 1e-5 of PyTorch (what the defaults may use), and the fastest of all."""
    from imprinting.imprint import embed_files

    for p in files:
        p.read_bytes()  # the OS file cache holds them
    embed_files(model, files[:32])  # picks (and measures, once) the engine
    engine = model.frozen_engine()
    size = model.preprocess.image_size
    x = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(0))
    pipe, bare = [], []
    for _ in range(max(2, repeats)):
        t0 = time.perf_counter()
        embed_files(model, files)
        pipe.append(len(files) / (time.perf_counter() - t0))
        bare.append(32 / timed(lambda: engine.run(x), 2))
    rate, alongside = statistics.median(pipe), statistics.median(bare)
    return [{"measure": "bare forward of the same engine, batch 32, timed alternately with the pipeline",
             "engine": engine.describe(), "images_per_s": round(alongside, 1)},
            {"measure": f"pipeline: embed_files(model, {len(files)} Flowers-102 JPEGs), defaults",
             "engine": engine.describe(), "images_per_s": round(rate, 1),
             "vs_best_bare": f"{rate / best[0]:.2f}x of the best exact ({rate / alongside:.2f}x of the bare forward "
                             f"alongside; {rate / best[1]:.2f}x of the fastest at any precision)",
             "vs_eager_nchw": f"{rate / eager:.2f}x"}]


class _NoForward:
    """An engine that does nothing: what is left of the pipeline is decoding."""

    uses_cpu = True

    def run(self, batch) -> torch.Tensor:
        return torch.empty(len(batch), 0)


def decode_row(model, files: list[Path]) -> dict:
    """Decoding alone (JPEG decode, resize, centre crop, normalize) on this one thread:
    ``center_features`` with ``workers=0`` and an engine that does nothing."""
    from imprinting.engines.pipeline import center_features

    center_features(_NoForward(), files[:32], model.preprocess, workers=0)  # warm-up
    t0 = time.perf_counter()
    center_features(_NoForward(), files, model.preprocess, workers=0)
    ms = 1000 * (time.perf_counter() - t0) / len(files)
    return {"measure": f"decoding alone, one thread, {len(files)} Flowers-102 JPEGs: {ms:.2f} ms per image",
            "engine": "none", "images_per_s": round(1000 / ms, 1)}


def predict_row(files: list[Path], data_root) -> dict:
    cli = [sys.executable, "-m", "imprinting.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.safetensors"
        subprocess.run([*cli, "create", str(model)], check=True, capture_output=True)
        for k, start in enumerate((0, 40, 80)):
            subprocess.run([*cli, "add-class", str(model), "--name", f"class{k}", *map(str, files[start : start + 5])],
                           check=True, capture_output=True)
        t0 = time.perf_counter()
        subprocess.run([*cli, "predict", str(model), "--json", *map(str, files)], check=True, capture_output=True)
        wall = time.perf_counter() - t0
    return {"measure": f"imprint predict, {len(files)} JPEGs (whole command)", "engine": "auto",
            "seconds": round(wall, 1), "images_per_s": round(len(files) / wall, 1)}


def train_child(keep: bool, size: int, steps: int) -> dict:
    if keep:
        from imprinting.engines.allocator import keep_freed_memory

        assert keep_freed_memory()
    from imprinting.build import create_model

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", dim=64, num_classes=100).to(memory_format=torch.channels_last)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-5, momentum=0.9)
    x = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (32,))

    def step():
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    times = []
    for _ in range(steps):
        a = time.perf_counter()
        step()
        times.append(time.perf_counter() - a)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"images_per_s": round(32 / statistics.median(times), 1), "cpu_s_per_image": round(cpu / (32 * steps), 4),
            "kernel_share": round((r1.ru_stime - r0.ru_stime) / cpu, 3),
            "minor_faults_per_step": round((r1.ru_minflt - r0.ru_minflt) / steps),
            "seconds": round(time.perf_counter() - t0, 1)}


def allocator_rows(size: int, steps: int, rounds: int) -> list[dict]:
    rows = []
    for r in range(rounds):  # interleaved: the machine's load changes
        for label, opts in ALLOCATORS.items():
            out = subprocess.run([sys.executable, __file__, "--train-child", json.dumps({"keep": bool(opts), "size": size,
                                  "steps": steps})], check=True, capture_output=True, text=True)
            rows.append({"allocator": label, "round": r + 1, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(rows[-1], flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--images", type=int, default=192, help="JPEGs for the pipeline")
    ap.add_argument("--predict-images", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--allocator", action="store_true", help="measure the allocator settings instead")
    ap.add_argument("--size", type=int, default=96, help="--allocator: image size of the training steps")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--train-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train_child:
        opts = json.loads(args.train_child)
        print(json.dumps(train_child(opts["keep"], opts["size"], opts["steps"])))
        return
    command = ["python", "benchmarks/engines.py", *(argv if argv is not None else sys.argv[1:])]
    load = os.getloadavg()[0]
    if args.allocator:
        rows = allocator_rows(args.size, args.steps, args.rounds)
        columns = ["allocator", "round", "images_per_s", "cpu_s_per_image", "kernel_share", "minor_faults_per_step"]
        extra = {"work": f"whole-network training steps, batch 32, {args.size} px, {torch.get_num_threads()} torch threads"}
    else:
        from imprinting import create_model

        model = create_model("efficientnet_lite0", dim=None)
        rows = bare_rows(model, args.repeats)
        timed_rows = [r for r in rows if "images_per_s" in r]
        exact = max(r["images_per_s"] for r in timed_rows if r["embedding_max_abs_diff"] <= 1e-5)
        best, eager = (exact, max(r["images_per_s"] for r in timed_rows)), rows[0]["images_per_s"]
        files = flowers(args.data_root, max(args.images, args.predict_images))
        rows += pipeline_rows(model, files[: args.images], args.repeats, best, eager)
        rows.append(decode_row(model, files[: args.images]))
        rows.append(predict_row(files[: args.predict_images], args.data_root))
        columns = ["measure", "engine", "images_per_s", "embedding_max_abs_diff", "vs_best_bare", "vs_eager_nchw", "seconds"]
        extra = {"model": "efficientnet_lite0 (ImageNet), 224 px, dim=None", "torch_threads": torch.get_num_threads()}
    prov = provenance(command, **extra, load_average=f"{load:.1f} before, {os.getloadavg()[0]:.1f} after (shared machine)")
    print("\n".join(f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in prov.items()))
    print()
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
