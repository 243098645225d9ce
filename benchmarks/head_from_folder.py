"""A user's first model, made the way the README makes it: ``imprint create --from-folder`` on a
folder of class folders with a few photos each, then prediction on held-out photos of the same
classes, with each ``--head`` (the choice between them is the library's, on the folder alone).

    .venv/bin/python benchmarks/head_from_folder.py --dataset flowers102 --classes 40 --shots 5 --seeds 0 1 2

For each seed: ``classes`` random classes of the data set's train split, ``shots`` random
photos each as the folder (symlinks in a temporary folder), every test-split photo of those
classes as the held-out set. Prints top-1 per head and seed, and the head ``auto`` chose.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from imprinting.build import create_model
from imprinting.imprint import imprint_folder


def read(dataset: str, root: str, split: str):
    if dataset == "flowers102":
        from imprinting.data.flowers import read_flowers102

        return read_flowers102(root, split=split, download=False)
    from imprinting.data.cub import read_cub

    return read_cub(root, split=split)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="flowers102", choices=["flowers102", "cub"])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--classes", type=int, default=40)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--test-per-class", type=int, default=20)
    args = p.parse_args(argv)
    train, test = read(args.dataset, args.data_root, "train"), read(args.dataset, args.data_root, "test")
    print(f"- command: python benchmarks/head_from_folder.py --dataset {args.dataset} --classes {args.classes} "
          f"--shots {args.shots} --seeds {' '.join(map(str, args.seeds))} --image-size {args.image_size} "
          f"--test-per-class {args.test_per_class}")
    print(f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
          f"{platform.processor() or 'cpu'}; EfficientNet-Lite0 (ImageNet), no base training\n")
    print("| seed | head asked | head used | top-1 (%) | simulated-episode scores (whitened / paper) |")
    print("|---:|---|---|---:|---|")
    results: dict[str, list[float]] = {}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        labels = np.array(train.labels)
        chosen = rng.choice(np.unique(labels), args.classes, replace=False)
        tlabels = np.array(test.labels)
        with tempfile.TemporaryDirectory() as tmp:
            for c in chosen:
                folder = Path(tmp) / f"class_{c:03d}"
                folder.mkdir()
                for i in rng.choice(np.flatnonzero(labels == c), args.shots, replace=False):
                    src = Path(train.paths[i])
                    (folder / src.name).symlink_to(src.resolve())
            held = [i for c in chosen for i in rng.permutation(np.flatnonzero(tlabels == c))[: args.test_per_class]]
            truth = [f"class_{tlabels[i]:03d}" for i in held]
            for head in ("normalized-mean", "whitened", "auto"):
                model = create_model("efficientnet_lite0", dim=None, image_size=args.image_size,
                                     power=None if head == "normalized-mean" else 0.5)
                report = imprint_folder(model, tmp, head=head)["head"] or {}
                preds = model.predict_images([test.paths[i] for i in held], k=1)
                top1 = 100 * np.mean([p.classes[0] == t for p, t in zip(preds, truth)])
                used = model.classes.head.kind if model.classes.head is not None else "normalized-mean"
                sims = f"{report.get('whitened', '')} / {report.get('normalized-mean', '')}" if head != "normalized-mean" else ""
                results.setdefault(head, []).append(top1)
                print(f"| {seed} | {head} | {used} | {top1:.1f} | {sims} |", flush=True)
    print()
    for head, v in results.items():
        print(f"- {head}: top-1 {np.mean(v):.1f} ± {np.std(v):.1f} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
