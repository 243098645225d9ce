"""The product's whitened head against the protocol's method, on the same cached features and
episodes: does a model made the product's way (``imprint train --head whitened``: the head fitted
on the base training embeddings, every base class its mean, novel classes taught into the class
table) choose its correction as well as the protocol's row does?

    .venv/bin/python benchmarks/head_rule_product.py --data-root ../shared/data

Rows, for CUB and Flowers-102 (EfficientNet-Lite0 ImageNet features at 224 px, the paper's split,
the feature cache of ``benchmarks/compare.py``): the product head with its correction rule
(``heads.rule``, the default), the same head with the frozen corrections of the base-only rule
(files from before the rule), and the protocol's ``methods.WhitenedMeans``, whose covariance also
pools each episode's examples. Top-1 (%) on novel and on all test images, mean ± std over draws.
"""

from __future__ import annotations

import argparse
import platform
from datetime import datetime, timezone

import numpy as np
import torch

from imprinting import heads, protocol
from imprinting.classes import ClassTable
from imprinting.layers import power_transform
from imprinting.methods import FitResult, Method
from imprinting.methods.whitened import WhitenedMeans


class ProductHead(Method):
    """The product's path on cached features: ``heads.fit_head`` on the base classes' power-
    transformed training embeddings (as ``imprint train --head whitened`` does), then a class
    table of every base class's mean and the episode's novel classes."""

    def __init__(self, rule: bool):
        self.rule = rule
        self.name = "product head, correction rule" if rule else "product head, frozen corrections"
        self._prepared: dict = {}

    def _prepare(self, data):
        key = id(data.train_feats)
        if key not in self._prepared:
            z = power_transform(data.train_feats, 0.5).numpy()
            base = data.base_train_idx.numpy()
            y = data.train_y.numpy()
            head, report = heads.fit_head(z[base], y[base], "whitened", "base", names=[str(c) for c in range(len(data.order))])
            if not self.rule:
                head = heads.WhitenedHead(head.centre, head.covariance, head.shrinkage, head.correction, source="base")
            self._prepared = {key: (z, y, head, report)}
        return self._prepared[key]

    def fit(self, data, episode) -> FitResult:
        z, y, head, report = self._prepare(data)
        idx = torch.cat([data.base_train_idx, episode.shots]).numpy()
        classes = len(data.order)
        sums = np.zeros((classes, z.shape[1]))
        np.add.at(sums, y[idx], z[idx].astype(np.float32).astype(np.float64))
        counts = np.bincount(y[idx], minlength=classes)
        unit = sums / np.linalg.norm(sums, axis=1, keepdims=True)
        table = ClassTable.from_arrays([str(c) for c in range(classes)], unit, sums, counts, np.ones(1), head=head)
        info = {"shrinkage": head.shrinkage, "correction": table.head_info()["correction"]}
        return FitResult(lambda feats: torch.from_numpy(table.logits(None, power_transform(feats, 0.5).numpy())), info=info)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--datasets", nargs="+", default=["cub", "flowers102"])
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5, 20])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None)
    args = p.parse_args(argv)
    from imprinting.experiments.data import prepare

    print(f"- command: python benchmarks/head_rule_product.py --data-root {args.data_root} --datasets "
          f"{' '.join(args.datasets)} --shots {' '.join(map(str, args.shots))} --draws {args.draws} --seed {args.seed}")
    print(f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
          f"{platform.processor() or 'cpu'}\n")
    lines = []
    for ds in args.datasets:
        data = prepare(ds, args.data_root, augment=2, seed=args.seed, cache=args.cache, progress=True)
        eps = protocol.episodes(data, tuple(args.shots), args.draws, args.seed)
        methods = [ProductHead(True), ProductHead(False), WhitenedMeans(seed=args.seed)]
        results = protocol.run(data, methods, eps, progress=False)
        for m in methods:
            cells = []
            for col in ("novel", "all"):
                for n in args.shots:
                    v = [getattr(r, col) for r in results if r.method == m.name and r.n == n]
                    cells.append(f"{np.mean(v):.1f} ± {np.std(v):.1f}")
            chosen = [r.info.get("correction") for r in results if r.method == m.name and r.draw == 0]
            lines.append(f"| {ds} | {m.name} | " + " | ".join(cells) + f" | {chosen} |")
    head = " | ".join([f"novel n={n}" for n in args.shots] + [f"all n={n}" for n in args.shots])
    print(f"| data set | head | {head} | corrections chosen, draw 0 (n = {', '.join(map(str, args.shots))}) |")
    print("|---|---|" + "---:|" * (2 * len(args.shots)) + "---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
