"""Training and inference speed of the whole network by image size: what end-to-end
fine-tuning costs on this machine, and so which image size `imprint reproduce e2e` can use.

EfficientNet-Lite0 (ImageNet weights) with the 64-d FC layer and a 100-class cosine
classifier, random tensors (no decoding), channels_last, at 2 torch threads:
  - training step: forward + backward + RMSProp step on a batch of 32, in train mode;
  - forward: embeddings of a batch of 128, no_grad, eval mode.
One warm-up step, then the median of ``--repeats`` timed steps. Images per second; the load
average before and after is recorded (the machine may be shared).

Usage::

    .venv/bin/python benchmarks/train_speed.py --sizes 96 128 160 192 224
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from imprinting.build import create_model
from imprinting.report import provenance, write_tables


def timed(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160, 192, 224])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("results"), help="writes train_speed.{md,csv,json} here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    model = create_model("efficientnet_lite0", dim=64, num_classes=100).to(memory_format=torch.channels_last)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-5, momentum=0.9)
    rows = []
    for size in args.sizes:
        x = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 100, (32,))
        xb = torch.randn(128, 3, size, size).contiguous(memory_format=torch.channels_last)

        def train_step():
            model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def forward():
            model.eval()
            with torch.no_grad():
                model.embed(xb)

        train_s, fwd_s = timed(train_step, args.repeats), timed(forward, args.repeats)
        rows.append({"image_size": size, "train_images_per_s": round(32 / train_s, 1),
                     "forward_images_per_s": round(128 / fwd_s, 1)})
        print(rows[-1], flush=True)
    command = ["python", "benchmarks/train_speed.py", *(argv if argv is not None else sys.argv[1:])]
    prov = provenance(command, threads=args.threads, repeats=args.repeats, backbone="efficientnet_lite0 (ImageNet), float32",
                      load_average=f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    path = write_tables(args.out, "train_speed", "Whole-network training and forward speed by image size", rows,
                        ["image_size", "train_images_per_s", "forward_images_per_s"], prov)
    print(path.read_text())
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
