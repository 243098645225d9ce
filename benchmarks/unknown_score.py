"""How well does a score tell images of classes the model was never taught from known ones?

Issue #13, item 4. On cached backbone features of a data set's base/novel split, a share of
the novel classes (``--unknown-share``, default one third, drawn with the seed) is held out
entirely: never taught, its test images are the "unknown" queries. The other novel classes
are taught from n images each (the protocol's nested draws), the base classes from all their
training images. Known queries: the test images of base and taught novel classes. For each
score, the AUROC of telling known from unknown queries (scikit-learn's ``roc_auc_score``,
1.0 = perfect, 0.5 = chance):

- ``max cosine``: the best cosine with an L2-normalized class mean of the raw features (what
  ``imprint create`` models threshold today with ``--unknown-threshold``);
- ``max cosine, centred``: the same on power-transformed, centred features (SimpleShot's CL2N);
- ``Mahalanobis``: minus the smallest whitened distance to a class mean, with the shared
  within-class covariance of the base classes (``imprinting.heads``), shrinkage chosen by
  ``heads.choose``;
- ``whitened score``: the best score of the whitened head itself (shot-corrected bias).

Usage::

    .venv/bin/python benchmarks/unknown_score.py --dataset cub --image-size 96 --augment 2
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def whitened(data, seed: int):
    """The feature map and the whitened head of the base classes, with its shrinkage and
    correction chosen by ``heads.choose``: the same for every shot count and draw."""
    from imprinting import heads

    base = data.base_train_idx.numpy()
    raw, y = data.train_feats.numpy()[base], data.train_y.numpy()[base]
    fmap = heads.FeatureMap(0.5, heads.FeatureMap(0.5)(raw).mean(axis=0))
    x = fmap(raw)
    shrinkage, correction, _ = heads.choose(x, y, seed=seed)
    scatter, dof = heads.within_class_scatter(x, y)
    return fmap, heads.WhitenedMeans(scatter / dof, shrinkage, correction)


def scores_for(data, shots: int, draw: int, unknown: set, seed: int, fmap, head) -> tuple[dict, np.ndarray]:
    """score name -> (M,) known-ness of every test image of a base or novel class, and the
    (M,) truth (1 = a class the model knows)."""
    from imprinting import heads, protocol

    ep = [e for e in protocol.episodes(data, (shots,), draws=draw + 1, seed=seed) if e.draw == draw][0]
    y_tr, y_te = data.train_y.numpy(), data.test_y.numpy()
    known_classes = [c for c in range(len(data.order)) if c not in unknown]
    shots_idx = [i for i in ep.shots.numpy() if y_tr[i] not in unknown]
    idx = np.concatenate([data.base_train_idx.numpy(), shots_idx]).astype(int)
    queries = y_te >= 0
    truth = np.array([0 if y in unknown else 1 for y in y_te[queries]])
    raw_tr, raw_te = data.train_feats.numpy(), data.test_feats.numpy()[queries]
    out = {}

    unit = heads.FeatureMap(None)
    means, _ = heads.class_means(unit(raw_tr[idx]), y_tr[idx], len(data.order))
    t = means[known_classes] / np.linalg.norm(means[known_classes], axis=1, keepdims=True)
    out["max cosine"] = (unit(raw_te) @ t.T).max(axis=1)

    x_tr, x_te = fmap(raw_tr), fmap(raw_te)
    means, counts = heads.class_means(x_tr[idx], y_tr[idx], len(data.order))
    m, n = means[known_classes], counts[known_classes]
    t = m / np.linalg.norm(m, axis=1, keepdims=True)
    out["max cosine, centred"] = (x_te / np.linalg.norm(x_te, axis=1, keepdims=True) @ t.T).max(axis=1)

    p = head.precision
    d2 = (np.einsum("nd,de,ne->n", x_te, p, x_te)[:, None] - 2 * x_te @ (m @ p).T
          + np.einsum("cd,de,ce->c", m, p, m)[None])
    out["Mahalanobis"] = -d2.min(axis=1)
    out["whitened score"] = head.scores(x_te, m, n).max(axis=1)
    return out, truth


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from imprinting.experiments.data import prepare
    from imprinting.report import markdown_table, provenance

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="cub", choices=["cub", "flowers102"])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--augment", type=int, default=2)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--shots", "-n", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--unknown-share", type=float, default=1 / 3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    data = prepare(a.dataset, a.data_root, image_size=a.image_size, augment=a.augment, cache=a.cache, progress=False)
    rng = np.random.default_rng(a.seed)
    novel = np.arange(data.num_base, len(data.order))
    unknown = set(rng.choice(novel, int(round(a.unknown_share * len(novel))), replace=False).tolist())
    fmap, head = whitened(data, a.seed)
    rows = {}
    for n in a.shots:
        for draw in range(a.draws):
            scores, truth = scores_for(data, n, draw, unknown, a.seed, fmap, head)
            for name, s in scores.items():
                rows.setdefault(name, {}).setdefault(n, []).append(100 * roc_auc_score(truth, s))
    table = [{"score": name, **{f"n = {n}": f"{np.mean(v):.1f} ± {np.std(v):.1f}" for n, v in per.items()}}
             for name, per in rows.items()]
    prov = provenance([".venv/bin/python", "benchmarks/unknown_score.py", *sys.argv[1:]],
                      data=f"{a.dataset}: {len(data.base)} base classes, {len(novel) - len(unknown)} taught and "
                      f"{len(unknown)} never-taught novel classes; image size {a.image_size or 'default'}",
                      seed=a.seed, draws=a.draws)
    print("# AUROC (%) of telling known from never-taught classes' test images\n")
    for k, v in prov.items():
        print(f"- {k}: {v}")
    print()
    print(markdown_table(table, ["score", *[f"n = {n}" for n in a.shots]]))


if __name__ == "__main__":
    main()
