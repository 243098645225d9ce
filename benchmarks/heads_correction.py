"""The whitened head's shot correction: the real test against the simulated episodes on the
base classes (issue #13).

On one data set's cached features (paper split, 224 px, no augmentation), for each shot count:

- the method's choice (``methods.WhitenedMeans``: shrinkage from ``heads.choose`` on simulated
  base-class episodes, the correction chosen per episode by ``heads.episode_correction``; the
  corrections it picked are listed) and the base-only rule's choice (``heads.choose``'s
  correction for that shot count), and the centred means
  (``RawFeatureNCM(center=True, power=0.5)``), novel and all-class top-1 on the test split;
- the same head with every (shrinkage, correction) of a grid given by hand, on the test split
  (for diagnosis only: nothing here feeds a choice);
- the simulated episodes' own novel and base top-1 at the chosen shrinkage for each correction,
  on the episodes ``heads.choose`` scores (what the rule sees): the base queries there are
  held-out *training* images.

Usage::

    .venv/bin/python benchmarks/heads_correction.py --dataset flowers102 --data-root ../shared/data
"""

from __future__ import annotations

import argparse

import numpy as np

SHRINKAGES = (0.8, 0.9, 0.95, 1.0)
CORRECTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def simulated(x, y, shrinkage: float, n: int, seed: int = 0) -> dict:
    """{correction: (novel top-1, base top-1)} at ``n`` examples on the very episodes
    ``heads.choose`` scores (``heads.scored_episodes`` with its defaults): what the rule sees."""
    from imprinting import heads

    out = {c: [] for c in CORRECTIONS}
    for ep, by_shrinkage, truth, novel in heads.scored_episodes(x, y, (shrinkage,), seed=seed):
        if ep.n != n:  # the episodes of every shot count are drawn, so these are choose's
            continue
        head = by_shrinkage[shrinkage]
        for c in CORRECTIONS:
            head.correction = c
            right = head.scores(x[ep.query], ep.means, ep.counts).argmax(1) == truth
            out[c].append((right[novel].mean(), right[~novel].mean()))
    return {c: tuple(round(100 * float(v), 1) for v in np.mean(r, axis=0)) for c, r in out.items()}


def main() -> None:
    from imprinting import heads, protocol
    from imprinting.experiments.data import prepare
    from imprinting.methods import RawFeatureNCM, WhitenedMeans
    from imprinting.methods.whitened import base_feature_map
    from imprinting.report import markdown_table, provenance

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="flowers102", choices=["cub", "flowers102"])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--shots", "-n", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = prepare(args.dataset, args.data_root, augment=0, seed=args.seed, cache=args.cache)
    eps = protocol.episodes(data, tuple(args.shots), args.draws, args.seed)

    def test(method, n) -> tuple[str, list[dict]]:
        fits = [method.fit(data, e) for e in eps if e.n == n]
        res = [protocol.accuracies(f.scorer(data.test_feats), data) for f in fits]
        return " / ".join(f"{np.mean([r[k] for r in res]):.1f}" for k in ("novel", "all")), [f.info for f in fits]

    base = data.base_train_idx.numpy()
    x, y = base_feature_map(data)(data.train_feats.numpy()[base]), data.train_y.numpy()[base]
    shrinkage, correction, _ = heads.choose(x, y, seed=args.seed)  # the shrinkage WhitenedMeans(seed=...) takes; its correction is per episode
    rule, rows = WhitenedMeans(seed=args.seed), []
    for n in args.shots:
        rows.append({"n": n, "head": "centred means (RawFeatureNCM)", "test novel / all": test(RawFeatureNCM(True, 0.5), n)[0]})
        at_n = heads.WhitenedMeans(np.eye(1), shrinkage, correction).strength(np.array([n]))[0]
        text, infos = test(rule, n)
        picked = sorted(info["correction"] for info in infos)
        rows.append({"n": n, "head": f"the method's choice: shrinkage {shrinkage}, corrections {picked} by episode",
                     "test novel / all": text})
        rows.append({"n": n, "head": f"the base-only rule's choice: correction {at_n}",
                     "test novel / all": test(WhitenedMeans(shrinkage=shrinkage, correction=at_n), n)[0]})
        for a in SHRINKAGES:
            for c in CORRECTIONS:
                rows.append({"n": n, "head": f"shrinkage {a}, correction {c}",
                             "test novel / all": test(WhitenedMeans(shrinkage=a, correction=c), n)[0]})
    sim = []
    for n in args.shots:
        for c, (nov, bas) in simulated(x, y, shrinkage, n, seed=args.seed).items():
            sim.append({"n": n, "correction": c, "simulated novel": nov, "simulated base (held-out training images)": bas})
    prov = provenance(["python", "benchmarks/heads_correction.py", "--dataset", args.dataset],
                      data=f"{args.dataset}: {len(data.base)} base + {len(data.novel)} novel classes, 224 px, "
                           f"EfficientNet-Lite0 features", draws=args.draws)
    print("\n".join(f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in prov.items()))
    print()
    print(markdown_table(rows, ["n", "head", "test novel / all"]))
    print()
    print(f"Simulated episodes at shrinkage {shrinkage} (what the rule scores):\n")
    print(markdown_table(sim, ["n", "correction", "simulated novel", "simulated base (held-out training images)"]))


if __name__ == "__main__":
    main()
