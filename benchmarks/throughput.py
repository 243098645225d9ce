"""Raw embedding throughput: our extraction pipeline on real JPEGs vs the bare model forward.

On a few hundred real Flowers-102 JPEGs (default 192, spread over the training split) at
224 px with EfficientNet-Lite0, images per second for:

- decode + preprocess only (``load_image`` + the eval transform: bicubic resize of the
  short side to 256, centre crop 224, normalize), no network;
- bare forward: the same images already preprocessed and held in memory as one tensor,
  forwarded in batches (channels_last, no_grad): the limit for this machine;
- our pipeline: ``imprinting.data.features.compute_features`` from the JPEG files
  (DataLoader + decode + transform + forward), with 0, 1 (its default) and 2 DataLoader
  workers, at its default batch of 64 and at 16;
- one training step of the whole network (forward + backward, batch 32): what full
  fine-tuning would cost per image;
- the same forward, pipeline and training step in a child process whose glibc malloc keeps
  large blocks instead of returning them to the kernel after each use
  (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``): with the default allocator
  every activation tensor above the mmap threshold is a fresh mmap, so each forward pays for
  page faults (kernel time), which this shows.

At 1 torch thread (and a few at 2). The machine has 2 cores shared with other jobs, so
besides wall-clock images/s the table gives images per CPU-second (user + kernel time of
this process and its DataLoader workers), which other jobs disturb less; the load average
is recorded. Files are read once before timing, so the OS cache holds them.

Usage::

    .venv/bin/python benchmarks/throughput.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import update_section  # noqa: E402

from imprinting.backbones import create_backbone  # noqa: E402
from imprinting.data import ImageSet  # noqa: E402
from imprinting.data.features import compute_features  # noqa: E402
from imprinting.data.images import load_image  # noqa: E402
from imprinting.data.transforms import eval_transform, image_mode  # noqa: E402

# glibc malloc settings of the child process: keep freed blocks up to 2 GiB in the heap.
KEEP_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**31), "MALLOC_TRIM_THRESHOLD_": str(2**32)}
DEFAULT_ALLOCATOR = "glibc default"
KEEP_ALLOCATOR = "glibc, large blocks kept (MALLOC_MMAP_THRESHOLD_=2 GiB)"

# (what, torch threads, batch size, DataLoader workers) in the main process ...
PLAN = [("decode", 1, None, None),
        ("bare", 1, 64, None), ("bare", 1, 16, None),
        ("pipeline", 1, 64, 0), ("pipeline", 1, 64, 1), ("pipeline", 1, 64, 2), ("pipeline", 1, 16, 1),
        ("train", 1, 32, None),
        ("bare", 2, 64, None), ("pipeline", 2, 64, 1)]
# ... and in the child with the keep-memory allocator.
CHILD_PLAN = [("bare", 1, 64, None), ("bare", 1, 16, None), ("pipeline", 1, 64, 0), ("pipeline", 1, 64, 1),
              ("pipeline", 1, 16, 1), ("train", 1, 32, None)]


def pick_images(data_root, count: int) -> ImageSet:
    from imprinting.experiments.data import read_splits

    train, _, _ = read_splits("flowers102", data_root)
    step = max(1, len(train) // count)
    return train.subset(list(range(0, len(train), step))[:count], f"flowers102-throughput-{count}")


def rate(seconds: float, images: int) -> float:
    return images / seconds if seconds > 0 else float("nan")


def cpu_seconds() -> float:
    """CPU time (user + kernel) of this process and its finished children (DataLoader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Clock:
    def __enter__(self):
        self.wall, self.cpu, self.sys = time.perf_counter(), cpu_seconds(), os.times().system
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu
        self.sys = os.times().system - self.sys


def label(what: str, batch: int | None) -> str:
    return {"decode": "decode + preprocess only (no network)",
            "bare": f"bare forward, preloaded tensors (batch {batch})",
            "pipeline": f"our pipeline from JPEG files (compute_features, batch {batch})",
            "train": f"training step, whole network (forward + backward, batch {batch})"}[what]


def measure(images: ImageSet, backbone, image_size: int, plan, allocator: str, train_steps: int = 2) -> list[dict]:
    pre = backbone.preprocess.at_size(image_size)
    module = backbone.module.eval().to(memory_format=torch.channels_last)
    transform, mode = eval_transform(pre), image_mode(pre)
    n = len(images)
    for p in images.paths:  # warm the OS file cache
        Path(p).read_bytes()
    torch.set_num_threads(1)
    pixels = torch.stack([transform(load_image(p, mode)) for p in images.paths])
    rows = []
    for what, threads, batch, workers in plan:
        torch.set_num_threads(threads)
        count = n
        if what == "decode":
            with Clock() as c:
                torch.stack([transform(load_image(p, mode)) for p in images.paths])
        elif what == "bare":
            with torch.no_grad():
                module(pixels[:batch].contiguous(memory_format=torch.channels_last))  # warm-up
                with Clock() as c:
                    for i in range(0, n, batch):
                        module(pixels[i : i + batch].contiguous(memory_format=torch.channels_last))
        elif what == "pipeline":
            warm = images.subset(list(range(min(batch, n))), "warm")
            compute_features(backbone, pre, warm, batch_size=batch, num_workers=workers, progress=False)
            with Clock() as c:
                feats = compute_features(backbone, pre, images, batch_size=batch, num_workers=workers, progress=False)
            assert feats.shape == (n, backbone.feature_dim)
        else:  # one whole-network training step: forward + backward (full fine-tuning's unit of work)
            net = backbone.module.train()
            opt = torch.optim.SGD(net.parameters(), lr=1e-5)
            xb = pixels[:batch].contiguous(memory_format=torch.channels_last)
            net(xb).sum().backward()  # warm-up
            with Clock() as c:
                for _ in range(train_steps):
                    opt.zero_grad()
                    net(xb).sum().backward()
                    opt.step()
            net.eval()
            count = batch * train_steps
        row = {"measure": label(what, batch), "allocator": allocator, "torch_threads": threads,
               "workers": "-" if workers is None else workers, "batch": batch, "images": count,
               "seconds": round(c.wall, 2), "images_per_s": round(rate(c.wall, count), 1),
               "images_per_cpu_s": round(rate(c.cpu, count), 1),
               "kernel_share": round(c.sys / c.cpu, 2) if c.cpu > 0 else None}
        rows.append(row)
        print(f"  {row['measure']:68s} {allocator[:20]:20s} threads={threads} workers={row['workers']!s:>2}: "
              f"{row['images_per_s']:6.1f} img/s, {row['images_per_cpu_s']:6.1f} img per CPU-s, "
              f"kernel {row['kernel_share']}", flush=True)
    return rows


def run_child(args) -> list[dict]:
    """CHILD_PLAN in a fresh interpreter with the keep-memory allocator settings."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, __file__, "--child", str(out), "--images", str(args.images),
               "--image-size", str(args.image_size)] + (["--data-root", args.data_root] if args.data_root else [])
        subprocess.run(cmd, check=True, env={**os.environ, **KEEP_MEMORY_ENV})
        return json.loads(out.read_text())


def full_finetune_estimate(rows: list[dict], train_images: int = 2040, epochs: int = 5, episodes: int = 18) -> str:
    """Lower bound on full (end-to-end) fine-tuning for the compare.py grid, from the step rate."""
    best = max(r["images_per_s"] for r in rows if r["measure"].startswith("training step"))
    per_episode = train_images * epochs / best
    return (f"Full fine-tuning (backbone included) is not in the side-by-side run: at the best training rate "
            f"measured here ({best:.1f} img/s, forward + backward, no data loading), {epochs} epochs over about "
            f"{train_images} base + novel training images (Flowers-102; CUB has more) take at least "
            f"{per_episode / 60:.0f} min per episode, so the {episodes} episodes of compare.py would take at least "
            f"{per_episode * episodes / 3600:.1f} h, against its 15-minute budget.")


def section(rows: list[dict], prov: dict) -> str:
    head = "\n".join(f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in prov.items())
    bare = {(r["allocator"], r["torch_threads"], r["batch"]): r
            for r in rows if r["measure"].startswith("bare forward")}
    lines = ["| measure | allocator | torch threads | DataLoader workers | images/s (wall) | images per CPU-second "
             "| kernel share of CPU time | pipeline vs bare forward (same allocator, threads, batch): wall / CPU |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = bare.get((r["allocator"], r["torch_threads"], r["batch"]))
        share = (f"{100 * r['images_per_s'] / ref['images_per_s']:.0f}% / "
                 f"{100 * r['images_per_cpu_s'] / ref['images_per_cpu_s']:.0f}%"
                 if ref and "pipeline" in r["measure"] else "")
        kernel = f"{100 * r['kernel_share']:.0f}%" if r.get("kernel_share") is not None else ""
        lines.append(f"| {r['measure']} | {r['allocator']} | {r['torch_threads']} | {r['workers']} | "
                     f"{r['images_per_s']:.1f} | {r['images_per_cpu_s']:.1f} | {kernel} | {share} |")
    return "\n".join(["## Raw embedding throughput (`benchmarks/throughput.py`)", "", head, "", *lines, "",
                      full_finetune_estimate(rows), ""])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--images", type=int, default=192)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--out", default="results")
    p.add_argument("--no-child", action="store_true", help="skip the keep-memory allocator measurements")
    p.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)  # internal: run CHILD_PLAN, write rows
    p.add_argument("--render", metavar="JSON", help="only re-render the report from a benchmarks_throughput.json")
    args = p.parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        update_section(Path(args.out) / "benchmarks.md", "throughput", section(saved["rows"], saved["provenance"]))
        return

    images = pick_images(args.data_root, args.images)
    backbone = create_backbone("efficientnet_lite0", pretrained=True)
    if args.child:
        rows = measure(images, backbone, args.image_size, CHILD_PLAN, KEEP_ALLOCATOR)
        Path(args.child).write_text(json.dumps(rows))
        return

    from imprinting.report import provenance

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    rows = measure(images, backbone, args.image_size, PLAN, DEFAULT_ALLOCATOR)
    if not args.no_child:
        rows += run_child(args)
    prov = provenance(["python", "benchmarks/throughput.py", *(argv if argv is not None else sys.argv[1:])],
                      data=f"{len(images)} Flowers-102 training JPEGs (every k-th image of train+val)",
                      backbone=f"efficientnet_lite0 (ImageNet), {args.image_size} px, float32, channels_last",
                      load_average=f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (shared machine)",
                      seconds_total=round(time.perf_counter() - t_start, 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks_throughput.json").write_text(json.dumps({"provenance": prov, "rows": rows}, indent=1))
    update_section(out / "benchmarks.md", "throughput", section(rows, prov))
    print(f"wrote {out / 'benchmarks.md'} in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
