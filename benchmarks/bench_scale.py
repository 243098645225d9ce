"""Benchmark of scaling out: 1 vs 2 processes, and 100,000 classes; prints tables.

1. Processes (``--part procs``): the library's own code paths under ``torchrun`` (gloo on
   the CPU), 1 process with 1 thread, 1 process with 2 threads, 2 processes with 1 thread
   each, timed from a barrier (process start-up excluded):
   (a) feature extraction, ``compute_features`` with EfficientNet-Lite0 (ImageNet) at
       ``--image-size`` on ``--images`` JPEGs of iNaturalist size (800 px long side: real
       CUB-200 photos scaled up when ../shared/data has them, otherwise generated), the
       gather of the shards included;
   (b) base training on cached features (``train`` in frozen-backbone mode: FC 1280 -> 256
       and the cosine classifier over 1,240 classes, iNaturalist's base classes), one epoch
       of ``--head-samples`` synthetic features, global batch 256, after a warm-up epoch;
   (c) end-to-end training (``train`` with a ``TensorImageDataset``): Lite0 + FC + cosine
       classifier, forward and backward, one epoch of ``--e2e-images`` images after a
       warm-up epoch, global batch 16.
   Also the decode + preprocess cost per image (one process, one thread, no network) and
   the gloo all-reduce time of the head's and of the whole model's gradients.
2. Classes (``--part classes``, one process): adding 100,000 classes one at a time (time per
   class in each tenth of the run: flat = amortized O(1)); top-5 prediction over 100,000
   classes (batch 1 and 64); checkpoint size, save and load time; and a nearest-neighbour
   classifier that stores every example (n = 1, 2, 5, 10, 20 per class): its memory and
   top-5 prediction time against imprinting's.
3. The iNaturalist 2017 extrapolation of docs/scaling.md from the measured per-image costs
   (the assumptions are printed with it).

Usage::

    .venv/bin/python benchmarks/bench_scale.py [--part all|procs|classes] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imprinting.report import markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale_classes import part_classes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# iNaturalist 2017 (Van Horn et al. 2018; the paper's Section 6.3).
INAT_TRAIN, INAT_VAL, INAT_CLASSES, INAT_BASE, INAT_NOVEL = 579_184, 95_986, 5_089, 1_240, 3_849


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- images --------------------------------------------------------------------


def make_images(folder: Path, count: int, long_side: int = 800) -> Path:
    """``count`` JPEGs in 4 class folders, ``long_side`` px on the long side (iNaturalist's size)."""
    from PIL import Image

    shared = REPO.parent / "shared" / "data" / "cub" / "CUB_200_2011" / "images"
    sources = sorted(shared.glob("*/*.jpg"))[: count * 7 : 7] if shared.is_dir() else []
    rng = np.random.default_rng(0)
    for k in range(count):
        if k < len(sources):
            img = Image.open(sources[k]).convert("RGB")
            scale = long_side / max(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        else:  # smooth random colours: JPEG-compressible like a photo, unlike white noise
            small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((long_side, long_side * 3 // 4), Image.BICUBIC)
        path = folder / f"c{k % 4}" / f"{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=90)
    return folder


def decode_cost(folder: Path, image_size: int, views: int) -> dict:
    """Milliseconds per image to decode, resize, crop and normalize (one thread, no network):
    the centre crop, and ``views`` random crop + flip views from one decode."""
    from imprinting.backbones import create_backbone
    from imprinting.data.features import View, _Images
    from imprinting.data.folder import read_folder

    torch.set_num_threads(1)
    pre = create_backbone("efficientnet_lite0", pretrained=False).preprocess.at_size(image_size)
    paths = read_folder(folder).paths
    out = {}
    for name, view in (("center", View()), (f"augment{views}", View(views, seed=0))):
        data = _Images(paths, pre, view)
        data[0]
        t0 = time.perf_counter()
        for i in range(len(data)):
            data[i]
        out[name] = 1000 * (time.perf_counter() - t0) / len(data)
    return out


# -- workers (run under torchrun) ---------------------------------------------


def worker(args) -> None:
    """One rank of a timed run; rank 0 prints one JSON line."""
    from imprinting import distributed as dd

    torch.set_num_threads(args.threads)
    dd.init_from_env()
    result = {"procs": dd.world_size(), "threads": args.threads}
    if args.worker == "extract":
        result.update(_extract(args))
    elif args.worker == "head":
        result.update(_head(args))
    elif args.worker == "e2e":
        result.update(_e2e(args))
    elif args.worker == "allreduce":
        result.update(_allreduce(args))
    if dd.is_main():
        print("RESULT " + json.dumps(result), flush=True)


def _extract(args) -> dict:
    from imprinting import distributed as dd
    from imprinting.backbones import create_backbone
    from imprinting.data.features import View, compute_features
    from imprinting.data.folder import read_folder

    bb = create_backbone("efficientnet_lite0", pretrained=True)
    pre = bb.preprocess.at_size(args.image_size)
    images = read_folder(args.folder)
    compute_features(bb, pre, images.subset(range(2 * dd.world_size())), View(), batch_size=1, num_workers=0,
                     progress=False)  # warm-up: one-time kernel set-up
    dd.barrier()
    t0 = time.perf_counter()
    feats = compute_features(bb, pre, images, View(), batch_size=16, num_workers=0, progress=False)
    seconds = time.perf_counter() - t0
    assert feats.shape == (len(images), bb.feature_dim)
    return {"images": len(images), "seconds": seconds, "ms_per_image": 1000 * seconds / len(images)}


def _epoch_seconds(model, dataset, cfg) -> float:
    """Train 2 epochs; the second one's wall time (rank 0's clock, every rank in step)."""
    from imprinting import distributed as dd
    from imprinting.train import train

    marks = []
    dd.barrier()
    marks.append(time.perf_counter())
    train(model, dataset, cfg, evaluate=lambda m: marks.append(time.perf_counter()) or {}, progress=False)
    return marks[2] - marks[1]


def _head(args) -> dict:
    from imprinting.build import create_head
    from imprinting.train import FeatureDataset, TrainConfig

    g = torch.Generator().manual_seed(0)
    n = args.head_samples
    x = torch.randn(n, 1280, generator=g).relu()
    y = torch.randint(0, INAT_BASE, (n,), generator=g)
    torch.manual_seed(0)
    model = create_head(1280, 256, [f"c{i}" for i in range(INAT_BASE)])
    seconds = _epoch_seconds(model, FeatureDataset(x, y), TrainConfig(epochs=2, batch_size=256, balanced=True))
    return {"images": n, "seconds": seconds, "us_per_image": 1e6 * seconds / n}


def _e2e(args) -> dict:
    from imprinting.build import create_model
    from imprinting.train import TensorImageDataset, TrainConfig

    g = torch.Generator().manual_seed(0)
    n, s = args.e2e_images, args.image_size
    x = torch.randn(n, 3, s, s, generator=g)
    y = torch.arange(n) % 8
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", dim=256, class_names=[f"c{i}" for i in range(8)], image_size=s)
    seconds = _epoch_seconds(model, TensorImageDataset(x, y), TrainConfig(epochs=2, batch_size=16))
    return {"images": n, "seconds": seconds, "ms_per_image": 1000 * seconds / n}


def _allreduce(args) -> dict:
    import torch.distributed as dist

    from imprinting import distributed as dd
    from imprinting.build import create_model

    out = {}
    model = create_model("efficientnet_lite0", dim=256, pretrained=False, num_classes=INAT_CLASSES)
    sizes = {"head (FC + 1,240 classes)": 1280 * 256 + 256 + INAT_BASE * 256 + 1,
             "whole model (Lite0 + FC + 5,089 classes)": sum(p.numel() for p in model.parameters())}
    for name, numel in sizes.items():
        t = torch.randn(numel)
        times = []
        for _ in range(7):
            dd.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        out[name] = {"floats": numel, "ms": 1000 * statistics.median(times[2:])}
    return {"allreduce": out}


def run_torchrun(kind: str, procs: int, threads: int, extra: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(procs), "--master_port", str(_free_port()),
           str(Path(__file__).resolve()), "--worker", kind, "--threads", str(threads), *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{kind} with {procs} processes failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def part_procs(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        folder = make_images(work / "images", args.images)
        extra = ["--folder", str(folder), "--image-size", str(args.image_size), "--head-samples",
                 str(args.head_samples), "--e2e-images", str(args.e2e_images)]
        out = {"decode_ms_per_image": decode_cost(folder, args.image_size, ASSUME["views"])}
        for kind in ("extract", "head", "e2e"):
            out[kind] = [run_torchrun(kind, p, t, extra) for p, t in ((1, 1), (1, 2), (2, 1))]
        out["allreduce"] = run_torchrun("allreduce", 2, 1, extra)["allreduce"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n## 1 vs 2 processes ({os.cpu_count()} CPU cores, gloo)\n")
    d = out["decode_ms_per_image"]
    print(f"decode + resize + crop + normalize, 800 px JPEG -> {args.image_size} px, 1 thread: "
          + ", ".join(f"{k} {v:.1f} ms per image" for k, v in d.items()) + "\n")
    rows = []
    for kind, unit, label in (("extract", "ms_per_image", "feature extraction (Lite0 forward)"),
                              ("head", "us_per_image", "base training on cached features"),
                              ("e2e", "ms_per_image", "end-to-end training (Lite0 fwd + bwd)")):
        base = out[kind][0]["seconds"]
        for r in out[kind]:
            rows.append({"work": label, "processes x threads": f"{r['procs']} x {r['threads']}",
                         "images": r["images"], "seconds": f"{r['seconds']:.2f}",
                         "per image": f"{r[unit]:.1f} {unit.split('_')[0].replace('us', 'µs')}",
                         "speed-up vs 1 x 1": f"{base / r['seconds']:.2f}"})
    print(markdown_table(rows, ["work", "processes x threads", "images", "seconds", "per image", "speed-up vs 1 x 1"]))
    print("\ngloo all-reduce between the 2 processes (median of 5):\n")
    print(markdown_table([{"gradients": k, "floats": f"{v['floats']:,}", "ms": f"{v['ms']:.1f}"}
                  for k, v in out["allreduce"].items()], ["gradients", "floats", "ms"]))
    return out


# -- extrapolation --------------------------------------------------------------

# Assumptions for GPUs (not measured here: this machine has none). Change them with the
# options, or measure them with this script on a GPU machine.
ASSUME = {
    "gpu_forward_img_s": 4000.0,  # Lite0 forward at 224 px, one datacenter GPU (A100/H100 class), batch 256
    "gpu_train_img_s": 1200.0,  # Lite0 forward + backward at 224 px, the same GPU
    "cpu_cores_per_gpu": 12,  # data-loading cores per GPU (decode + augment)
    "scaling_efficiency_8": 0.90,  # DDP efficiency within one 8-GPU node (NVLink)
    "scaling_efficiency_64": 0.75,  # 8 nodes of 8 GPUs over the network
    "views": 5,  # augmented views per training image cached for Imprinting+Aug and training
    "epochs_e2e": 20,
}


def extrapolate(m: dict, assume: dict = ASSUME) -> list[dict]:
    """Hours for iNaturalist 2017 on 1, 8, 64 GPUs from the per-image costs ``m``."""
    decode_s = m["decode_ms_per_image"]["center"] / 1000  # per image per core
    augment_s = m["decode_ms_per_image"][f"augment{assume['views']}"] / 1000  # one decode, k views
    passes = INAT_TRAIN * (1 + assume["views"]) + INAT_VAL  # forwards for the feature cache
    loading = (INAT_TRAIN + INAT_VAL) * decode_s + INAT_TRAIN * augment_s  # CPU seconds to feed them
    rows = []
    for gpus in (1, 8, 64):
        eff = 1.0 if gpus == 1 else assume["scaling_efficiency_8"] if gpus <= 8 else assume["scaling_efficiency_64"]
        cores = gpus * assume["cpu_cores_per_gpu"]
        # each stage runs at the slower of the GPUs and the data-loading cores
        gpu_fwd, cpu_fwd = passes / (gpus * assume["gpu_forward_img_s"]), loading / cores
        gpu_e2e, cpu_e2e = INAT_TRAIN / (gpus * assume["gpu_train_img_s"] * eff), INAT_TRAIN * decode_s / cores
        rows.append({
            "GPUs": gpus,
            "data-loading cores": cores,
            "feature cache (h)": round(max(gpu_fwd, cpu_fwd) / 3600, 2),
            "cache bound by": "GPU" if gpu_fwd >= cpu_fwd else "JPEG decoding",
            "end-to-end epoch (h)": round(max(gpu_e2e, cpu_e2e) / 3600, 3),
            "end-to-end bound by": "GPU" if gpu_e2e >= cpu_e2e else "JPEG decoding",
            f"end-to-end, {assume['epochs_e2e']} epochs (h)":
                round(assume["epochs_e2e"] * max(gpu_e2e, cpu_e2e) / 3600, 2),
        })
    return rows


def cpu_only(m: dict, views: int = ASSUME["views"]) -> dict:
    """This machine's measured costs applied to iNaturalist 2017 (one CPU process, one thread)."""
    d = m["decode_ms_per_image"]
    forwards = INAT_TRAIN * (1 + views) + INAT_VAL
    forward_ms = m["extract_ms_per_image"] - d["center"]  # the extraction timing includes decoding
    loading = (INAT_TRAIN + INAT_VAL) * d["center"] + INAT_TRAIN * d[f"augment{views}"]
    return {
        "feature cache (h)": (loading + forwards * forward_ms) / 3.6e6,
        "head epoch (h)": INAT_TRAIN * m["head_us_per_image"] / 3.6e9,
        "end-to-end epoch (h)": INAT_TRAIN * (d["center"] + m["e2e_ms_per_image"]) / 3.6e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "procs", "classes"], default="all")
    ap.add_argument("--images", type=int, default=96, help="JPEGs for feature extraction")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--head-samples", type=int, default=20_000)
    ap.add_argument("--e2e-images", type=int, default=48)
    ap.add_argument("--classes", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--class-threads", type=int, default=1, help="torch threads for the class benchmark")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure as JSON")
    # worker mode (under torchrun)
    ap.add_argument("--worker", choices=["extract", "head", "e2e", "allreduce"], help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from imprinting.report import provenance

    prov = provenance(command=["python", f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])
    print(f"# Scaling benchmark\n\n- command: `{prov['command']}`\n- date: {prov['date']}\n"
          f"- machine: {prov['machine']}\n- torch: {prov['torch']}")
    results: dict = {"provenance": prov}
    if args.part in ("all", "procs"):
        results["procs"] = part_procs(args)
    if args.part in ("all", "classes"):
        results["classes"] = part_classes(args)
    if "procs" in results:
        p = results["procs"]
        m = {"decode_ms_per_image": p["decode_ms_per_image"],
             "extract_ms_per_image": p["extract"][0]["ms_per_image"],
             "head_us_per_image": p["head"][0]["us_per_image"],
             "e2e_ms_per_image": p["e2e"][0]["ms_per_image"]}
        results["measured_per_image"] = m
        results["assumptions"] = ASSUME
        results["inat_cpu_1_thread_hours"] = cpu_only(m)
        results["inat_gpu_hours"] = extrapolate(m)
        print("\n## iNaturalist 2017 extrapolation\n")
        print("One CPU process, one thread (measured costs only): "
              + ", ".join(f"{k} {v:,.2f}" for k, v in results["inat_cpu_1_thread_hours"].items()) + "\n")
        print("GPUs (assumptions: " + ", ".join(f"{k}={v}" for k, v in ASSUME.items()) + "):\n")
        print(markdown_table(results["inat_gpu_hours"], list(results["inat_gpu_hours"][0])))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
