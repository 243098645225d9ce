"""The product's whitened head against the protocol's method, on the same cached features and
episodes: does a model made the product's way (``imprint train --head whitened``: the head fitted
on the base training embeddings, every base class its mean, novel classes taught into the class
table) choose its correction as well as the protocol's row does?

    .venv/bin/python benchmarks/head_rule_product.py --data-root ../shared/data

Rows, for CUB and Flowers-102 (EfficientNet-Lite0 ImageNet features at 224 px, the paper's split,
the feature cache of ``benchmarks/compare.py``): the product head with its correction rule
(``methods.ProductHead``; ``heads.rule``, the default), the same head with the frozen corrections of
the base-only rule (files from before the rule), the product head with each episode's examples
pooled into its covariance (not what a model does: what it gives up by not doing it), and the
protocol's ``methods.WhitenedMeans``, whose covariance pools them too. Top-1 (%) on novel and on all test images, mean ± std over draws.
"""

from __future__ import annotations

import argparse
import platform
from datetime import datetime, timezone

import numpy as np

from imprinting import protocol
from imprinting.methods.product_head import ProductHead
from imprinting.methods.whitened import WhitenedMeans


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
        methods = [ProductHead(True, args.seed), ProductHead(False, args.seed), ProductHead(True, args.seed, pool=True),
                   WhitenedMeans(seed=args.seed)]
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
