"""How many one-shot classes compete: the whitened head's best one-shot correction on the real
test as the number of novel classes grows (issue #13, docs/heads.md).

On one data set's cached features (paper split, 224 px, no augmentation), one-shot episodes
(``protocol.episodes``): the protocol's ``methods.WhitenedMeans`` at the shrinkage the rule
picks (``heads.choose``) with each correction of a grid given by hand, scored on the test
images of the base classes and of K novel classes drawn at random (the other novel classes
left out of the model and of the test), for several K. Reported: novel and base top-1 (both
among all the model's classes) and their mean, the balanced score the rule maximizes on its
simulated episodes. For diagnosis only: the test labels feed no choice here.

The rule's own episodes (``heads.simulated_episodes``) have round(0.4 x base classes) fake
novel classes: the last row shows what it sees at that K.

Usage::

    .venv/bin/python benchmarks/heads_novel_count.py --dataset flowers102 --data-root ../shared/data
"""

from __future__ import annotations

import argparse

import numpy as np

CORRECTIONS = (0.5, 0.75, 1.0)


def main() -> None:
    from imprinting import heads, protocol
    from imprinting.experiments.data import prepare
    from imprinting.methods import WhitenedMeans
    from imprinting.methods.whitened import base_feature_map
    from imprinting.report import markdown_table, provenance

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="flowers102", choices=["cub", "flowers102"])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--counts", "-k", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = prepare(args.dataset, args.data_root, augment=0, seed=args.seed, cache=args.cache)
    nb, classes = data.num_base, len(data.order)
    counts = sorted({k for k in args.counts if 0 < k < classes - nb} | {classes - nb})
    base = data.base_train_idx.numpy()
    x = base_feature_map(data)(data.train_feats.numpy()[base])
    shrinkage, correction, sim = heads.choose(x, data.train_y.numpy()[base], seed=args.seed)
    truth = data.test_y.numpy()
    rng = np.random.default_rng(args.seed)
    score = {(k, c): [] for k in counts for c in CORRECTIONS}
    for ep in protocol.episodes(data, (1,), args.draws, args.seed):
        subsets = {k: np.sort(rng.choice(np.arange(nb, classes), k, replace=False)) for k in counts}
        for c in CORRECTIONS:
            s = WhitenedMeans(shrinkage=shrinkage, correction=c).fit(data, ep).scorer(data.test_feats).numpy()
            for k, novel in subsets.items():
                cols = np.concatenate([np.arange(nb), novel])
                rows = np.isin(truth, cols)
                right = cols[s[rows][:, cols].argmax(1)] == truth[rows]
                is_novel = truth[rows] >= nb
                score[(k, c)].append((right[is_novel].mean(), right[~is_novel].mean()))
    table = []
    for k in counts:
        for c in CORRECTIONS:
            nov, bas = 100 * np.mean(score[(k, c)], axis=0)
            table.append({"novel classes K": k, "correction": c, "novel": f"{nov:.1f}", "base": f"{bas:.1f}",
                          "balanced (mean)": f"{(nov + bas) / 2:.1f}"})
    fake = max(1, int(round(0.4 * nb)))
    for c in CORRECTIONS:
        if (shrinkage, c, 1) in sim:
            table.append({"novel classes K": f"{fake} (the rule's simulated episodes)", "correction": c, "novel": "",
                          "base": "", "balanced (mean)": f"{100 * sim[(shrinkage, c, 1)]:.1f}"})
    prov = provenance(["python", "benchmarks/heads_novel_count.py", "--dataset", args.dataset],
                      data=f"{args.dataset}: {nb} base + {classes - nb} novel classes, 224 px, EfficientNet-Lite0 "
                           f"features; n = 1; shrinkage {shrinkage} (the rule's); the rule's one-shot correction "
                           f"{correction.get(1)}", draws=args.draws, seed=args.seed)
    print("\n".join(f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in prov.items()))
    print()
    print(markdown_table(table, ["novel classes K", "correction", "novel", "base", "balanced (mean)"]))


if __name__ == "__main__":
    main()
