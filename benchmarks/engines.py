"""Inference engines: bare forward per engine and batch size, the automatic choice, the
pipeline from JPEGs, ``imprint predict``.

One run, two tables (EfficientNet-Lite0 with its ImageNet weights,
``imprinting.create_model("efficientnet_lite0", dim=None)``, 224 px):

1. bare forward, images/s, at batch sizes 1, 4, 16 and 32 (``--sizes``): a batch of ready
   tensors through each engine and precision available here (``imprinting.engines``), median
   of ``--repeats`` runs after a warm-up; and PyTorch eager in NCHW as the library ran it
   before engines. With each, the largest difference of its embeddings (L2-normalized
   features) to PyTorch eager's at the largest size. Then the engine ``auto`` picks for each
   size: measured in this run (an empty cache folder, ``IMPRINTING_CACHE``, unless
   ``--keep-cache``), with its own figures and the seconds the measurement took;
2. the pipeline: ``imprinting.imprint.embed_files(model, files)`` with its defaults (batch
   32, the engine ``auto`` picks for it, decoding in threads) on ``--images`` real
   Flowers-102 JPEGs, and its ratio to the best exact bare forward at 32, to the bare
   forward of its engine timed alternately with it (the load of a shared machine changes),
   and to PyTorch eager NCHW; decoding alone on one thread (no forward pass); the resize and
   centre crop alone, of the whole image against only the crop (the same pixels); decoding a
   batch on every core right after a batch through each engine, and after 0.2 s idle (what
   an engine's threads left spinning take from the decoders: onnxruntime with and without
   ``session.force_spinning_stop``), and OpenVINO's bare forward at 16 right after
   onnxruntime, the same two ways; ``imprint predict`` on 600 JPEGs: the wall time of the
   whole command (start-up included).

``--allocator`` instead measures the glibc allocator settings of
``imprinting.engines.allocator`` against none, each in a fresh process: whole-network
training steps (EfficientNet-Lite0 + 64-d FC + 100-class cosine classifier, RMSProp, batch
32, 96 px, as ``benchmarks/train_speed.py``): images/s, CPU seconds per image and minor page
faults per step.

Usage (timings under ``flock /tmp/imprinting-bench.lock`` on a machine shared with others)::

    flock /tmp/imprinting-bench.lock .venv/bin/python benchmarks/engines.py --data-root ../shared/data
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

import numpy as np
import torch
import torch.nn.functional as F

from imprinting.report import markdown_table, provenance

ALLOCATORS = {
    "none (glibc defaults)": {},
    "mallopt M_MMAP_THRESHOLD=1 GiB, M_TRIM_THRESHOLD=2 GiB (the CLI's)": {"keep": True},
}
SIZES = (1, 4, 16, 32)


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


def _rates(run, x: torch.Tensor, sizes, repeats: int) -> dict:
    return {f"batch {b}": round(b / timed(lambda: run(x[:b]), repeats), 1) for b in sizes}


def bare_rows(model, repeats: int, sizes=SIZES) -> tuple[list[dict], dict]:
    """One row per engine and precision: images/s at each size. Also returns the built engines."""
    from imprinting.engines import EngineUnavailable, available_engines, engine_precisions
    from imprinting.engines.select import build_engine, embedding_difference

    module, size, top = model.embedder.backbone, model.preprocess.image_size, max(sizes)
    x = torch.randn(top, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        module.to(memory_format=torch.contiguous_format)
        reference = module.eval()(x)
        rows = [{"engine": "PyTorch eager, NCHW (the library before engines)", **_rates(module, x, sizes, repeats),
                 "embedding_max_abs_diff": 0.0}]
    built = {}
    for name, reason in available_engines().items():
        if reason:
            rows.append({"engine": f"{name}: {reason}"})
            continue
        for precision in engine_precisions(name):
            try:
                engine = build_engine(name, module, (3, size, size), precision)
            except EngineUnavailable as exc:  # e.g. OpenVINO bf16 with ONEDNN_MAX_CPU_ISA=AVX2
                rows.append({"engine": f"{name} {precision}: {exc}"})
                continue
            built[(name, precision)] = engine
            rows.append({"engine": engine.describe(), **_rates(engine.run, x, sizes, repeats),
                         "embedding_max_abs_diff": float(f"{embedding_difference(engine.run(x), reference):.2g}")})
    return rows, built


def auto_row(model, sizes=SIZES) -> tuple[dict, object]:
    """The engine ``auto`` picks for each size (measured now unless the cache holds a record)."""
    auto = model.frozen_engine()
    figures = {f"batch {b}": f"{auto.engine_for(b).name} ({auto.images_per_s(b)})" for b in sizes}
    took, timing = auto.record.get("seconds"), auto.record.get("timing_seconds")
    return {"engine": f"auto picks (its own figures; timing {timing} s, {took} s with the graph and building)"
            if took is not None else "auto picks (its own figures, recorded earlier)", **figures}, auto


def pipeline_rows(model, files: list[Path], repeats: int, best: tuple[float, float], eager: float) -> list[dict]:
    """The pipeline, and its engine's bare forward timed alternately with it (on a shared
    machine the load changes between the two tables' rows). ``best``: the fastest bare
    forward at batch 32 within 1e-5 of PyTorch (what the defaults may use), and the fastest of all."""
    from imprinting.imprint import embed_files

    for p in files:
        p.read_bytes()  # the OS file cache holds them
    embed_files(model, files[:32])  # picks (and measures, once) the engine
    engine = model.frozen_engine().engine_for(32)
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
            {"measure": f"pipeline: embed_files(model, {len(files)} Flowers-102 JPEGs), defaults (batch 32)",
             "engine": engine.describe(), "images_per_s": round(rate, 1),
             "vs_best_bare": f"{rate / best[0]:.2f}x of the best exact at 32 ({rate / alongside:.2f}x of the bare "
                             f"forward alongside; {rate / best[1]:.2f}x of the fastest at any precision)",
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


def resize_row(model, files: list[Path]) -> dict:
    """The resize + centre crop alone, on this one thread, of the photos already decoded: the
    whole image resized then cropped (torchvision's ``Resize`` + ``CenterCrop``) against only
    the crop resized (``imprinting.data.crop``, the pixels checked equal on each photo)."""
    from imprinting.data.crop import center_crop
    from imprinting.data.images import load_image
    from imprinting.data.transforms import eval_crop

    pre, crop = model.preprocess, eval_crop(model.preprocess)
    images = [load_image(f, "RGB") for f in files]
    ms, crops = {"whole": float("inf"), "crop": float("inf")}, {}
    for name, fn in (("whole", lambda im: crop.center(crop.resize(im))),  # alternately, best of 2 each
                     ("crop", lambda im: center_crop(im, pre.resize_size, pre.image_size, crop.resample))) * 2:
        fn(images[0])
        t0 = time.perf_counter()
        crops[name] = [fn(im) for im in images]
        ms[name] = min(ms[name], 1000 * (time.perf_counter() - t0) / len(images))
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(crops["whole"], crops["crop"]))
    return {"measure": f"resize + centre crop alone, one thread, {len(files)} Flowers-102 photos: whole image "
                       f"{ms['whole']:.2f} ms, only the crop {ms['crop']:.2f} ms per image "
                       f"({'the same pixels' if same else 'PIXELS DIFFER'})",
            "engine": "none", "images_per_s": round(1000 / ms["crop"], 1)}


def decode_after_rows(model, files: list[Path], built: dict, repeats: int) -> list[dict]:
    """Decoding 32 photos on every core (the pipeline's decoders) right after a batch of 32
    through each float32 engine, and after 0.2 s idle, alternately: ms per photo."""
    from imprinting.engines.graph import onnx_graph
    from imprinting.engines.onnxruntime_engine import OnnxRuntimeEngine
    from imprinting.engines.pipeline import center_features

    pre, batch = model.preprocess, files[:32]
    engines = {e.describe(): e for (name, precision), e in built.items() if precision == "float32"}
    if ("onnxruntime", "float32") in built:
        shape = (3, pre.image_size, pre.image_size)
        spinning = OnnxRuntimeEngine(onnx_graph(model.embedder.backbone, shape), stop_spinning=False)
        engines[spinning.describe() + ", threads left spinning (onnxruntime's default)"] = spinning
    x = torch.randn(32, 3, pre.image_size, pre.image_size, generator=torch.Generator().manual_seed(0))
    after = {k: [] for k in engines}
    idle = []
    for _ in range(max(3, repeats)):
        for label, engine in engines.items():
            engine.run(x)
            t0 = time.perf_counter()
            center_features(_NoForward(), batch, pre)
            after[label].append(1000 * (time.perf_counter() - t0) / len(batch))
            time.sleep(0.2)
            t0 = time.perf_counter()
            center_features(_NoForward(), batch, pre)
            idle.append(1000 * (time.perf_counter() - t0) / len(batch))
    rows = [{"measure": f"decoding 32 photos on every core after 0.2 s idle: {statistics.median(idle):.2f} ms per image",
             "engine": "none"}]
    rows += [{"measure": f"decoding 32 photos on every core right after a batch of 32: {statistics.median(v):.2f} ms "
                         "per image", "engine": label} for label, v in after.items()]
    if ("onnxruntime", "float32") in built and ("openvino", "float32") in built:
        rows += timed_after_rows(built[("openvino", "float32")], built[("onnxruntime", "float32")], spinning, x, repeats)
    return rows


def timed_after_rows(timed_engine, stopping, spinning, x: torch.Tensor, repeats: int, batch: int = 16) -> list[dict]:
    """``timed_engine`` at ``batch`` timed right after a batch through onnxruntime, its threads
    left spinning or stopped, and after 0.2 s idle: what a measurement that times the engines
    one after the other saw (the choice before per-batch figures timed OpenVINO right after
    onnxruntime, at 16)."""
    runs = {"right after onnxruntime, its threads left spinning (onnxruntime's default)": (spinning, 0.0),
            "right after onnxruntime, its threads stopped (session.force_spinning_stop)": (stopping, 0.0),
            "after 0.2 s idle": (None, 0.2)}
    got = {label: [] for label in runs}
    timed_engine.run(x[:batch])
    for _ in range(max(3, repeats)):
        for label, (before, pause) in runs.items():
            if before is not None:
                before.run(x)
            time.sleep(pause)
            t0 = time.perf_counter()
            timed_engine.run(x[:batch])
            got[label].append(batch / (time.perf_counter() - t0))
    return [{"measure": f"bare forward, batch {batch}, {label}", "engine": timed_engine.describe(),
             "images_per_s": round(statistics.median(v), 1)} for label, v in got.items()]


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


def engine_tables(args) -> tuple[list[str], dict]:
    """Both tables and the summary lines, as Markdown; the provenance extras."""
    from imprinting import create_model

    model = create_model("efficientnet_lite0", dim=None)
    sizes = tuple(sorted(set(args.sizes)))
    top = f"batch {max(sizes)}"
    bare, built = bare_rows(model, args.repeats, sizes)
    auto, engine = auto_row(model, sizes)
    timed_rows = [r for r in bare if top in r]
    exact_rows = [r for r in timed_rows if r["embedding_max_abs_diff"] <= 1e-5]
    best_exact = max(exact_rows, key=lambda r: r[top])
    best, eager = (best_exact[top], max(r[top] for r in timed_rows)), bare[0][top]
    files = flowers(args.data_root, max(args.images, args.predict_images))
    rows = pipeline_rows(model, files[: args.images], args.repeats, best, eager)
    rows.append(decode_row(model, files[: args.images]))
    rows.append(resize_row(model, files[: args.images]))
    rows += decode_after_rows(model, files, built, args.repeats)
    rows.append(predict_row(files[: args.predict_images], args.data_root))
    picked = engine.engine_for(max(sizes))
    fastest = {f"batch {b}": max((r for r in exact_rows if r is not bare[0]), key=lambda r, k=f"batch {b}": r[k])["engine"]
               for b in sizes}
    lines = [markdown_table([*bare, auto], ["engine", *(f"batch {b}" for b in sizes), "embedding_max_abs_diff"]), "",
             markdown_table(rows, ["measure", "engine", "images_per_s", "vs_best_bare", "vs_eager_nchw", "seconds"]), ""]
    for b in sizes:
        mine = engine.engine_for(b).describe()
        lines.append(f"- batch {b}: auto runs {mine}; the fastest exact engine in table 1: {fastest[f'batch {b}']}"
                     f" ({'the same' if mine == fastest[f'batch {b}'] else 'NOT the same'})")
    lines.append(f"- the pipeline's engine (batch 32): {picked.describe()}; best exact bare forward at {max(sizes)}: "
                 f"{best_exact['engine']} {best[0]} img/s; pipeline {rows[1]['images_per_s']} img/s = "
                 f"{rows[1]['images_per_s'] / best[0]:.2f}x")
    return lines, {"engine_choice": f"measured in this run, cache {os.environ['IMPRINTING_CACHE']}"
                   if not args.keep_cache else "the cache's record (measured earlier, or now if none)"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--images", type=int, default=192, help="JPEGs for the pipeline")
    ap.add_argument("--predict-images", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="batch sizes of the bare forward")
    ap.add_argument("--keep-cache", action="store_true",
                    help="use the cache's recorded engine choice (default: measure it again in an empty cache folder)")
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
        lines = [markdown_table(rows, columns)]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            if not args.keep_cache:
                os.environ["IMPRINTING_CACHE"] = tmp  # auto measures now; imprint predict reads the same record
            lines, extra = engine_tables(args)
        extra.update(model="efficientnet_lite0 (ImageNet), 224 px, dim=None", torch_threads=torch.get_num_threads())
    prov = provenance(command, **extra, load_average=f"{load:.1f} before, {os.getloadavg()[0]:.1f} after (shared machine)")
    print("\n".join(f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in prov.items()))
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
