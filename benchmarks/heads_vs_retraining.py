"""The closed-form whitened head (``imprinting.heads``) against centred class means and a
retrained LogisticRegression, on cached features, in the paper's two-stage protocol.

Issue #13's first check, on one data set at a time: the novel and all-class top-1 of
``methods.WhitenedMeans`` (shrinkage and per-shot correction chosen on simulated episodes of
the base classes), ``RawFeatureNCM(center=True, power=0.5)`` (SimpleShot-style centred means)
and scikit-learn's LogisticRegression (C = 10, balanced, retrained on base + novel each
episode, as ``benchmarks/compare.py`` runs it), mean ± std over the protocol's nested draws.

Usage::

    .venv/bin/python benchmarks/heads_vs_retraining.py --dataset cub --image-size 96 --augment 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from compare_peers import SklearnLogReg

    from imprinting import protocol
    from imprinting.experiments.data import prepare
    from imprinting.methods import RawFeatureNCM, WhitenedMeans
    from imprinting.report import markdown_table, provenance

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="cub", choices=["cub", "flowers102"])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--augment", type=int, default=2)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--shots", "-n", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    data = prepare(a.dataset, a.data_root, image_size=a.image_size, augment=a.augment, cache=a.cache, progress=False)
    methods = [RawFeatureNCM(center=True, power=0.5), WhitenedMeans(seed=a.seed),
               SklearnLogReg(C=10, class_weight="balanced")]
    results = protocol.run(data, methods, protocol.episodes(data, a.shots, a.draws, a.seed), progress=False)
    prov = provenance([".venv/bin/python", "benchmarks/heads_vs_retraining.py", *sys.argv[1:]],
                      seed=a.seed, data=f"{a.dataset}: {len(data.train)} train / {len(data.test)} test images, "
                      f"{len(data.base)} base + {len(data.novel)} novel classes, image size "
                      f"{a.image_size or 'default'}, EfficientNet-Lite0 (ImageNet, frozen)")
    print("# Whitened class means vs centred means vs retrained LogisticRegression: top-1 (%)\n")
    for k, v in prov.items():
        print(f"- {k}: {v}")
    print()
    print(markdown_table(protocol.summarize(results), ["method", "n", "novel", "all", "draws", "seconds"]))


if __name__ == "__main__":
    main()
