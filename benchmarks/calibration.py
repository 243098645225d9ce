"""Is the probability a model shows calibrated, before and after ``imprinting.calibration``?

Issue #15, item 2. Flowers-102 with a frozen EfficientNet-Lite0 (ImageNet weights, features
L2-normalized, no FC layer: what ``imprint create --from-folder`` makes), features cached.
For each shot count n and draw, n images per class are drawn from the official train+val
split and taught (``model.add_class``); the model is calibrated by leave-one-out over exactly
those examples (``calibration.calibrate``, what ``create --from-folder`` runs), with a target
false-accept rate of 5 % (and 20 %). Held-out images: the official test split (never taught).

Two settings:

- **all 102 classes taught**: top-1, the test images' NLL and expected calibration error
  (ECE, 15 bins of the top class's probability) at the default s = 10, after leave-one-out
  calibration, and with the scale fitted on the test images themselves (the best any single
  temperature can do: a bound, not a method);
- **68 classes taught, 34 never taught** (drawn with the seed): the share of the never-taught
  classes' test images the automatic threshold accepts (false accepts; the target) and the
  share of the taught classes' test images it rejects (false rejects).

Usage::

    .venv/bin/python benchmarks/calibration.py --data-root ../shared/data --image-size 96 --cache /tmp/user-cache
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def features(root, image_size, cache):
    """L2-normalized embeddings and labels of train+val (the teaching pool) and test."""
    import imprinting
    from imprinting.data.features import View, cached_features
    from imprinting.data.flowers import read_flowers102

    model = imprinting.create_model("efficientnet_lite0", dim=None, image_size=image_size)
    out = {}
    for split in ("train", "val", "test"):
        images = read_flowers102(root, split, download=False)
        feats = cached_features(model.backbone, images, model.preprocess, View(), cache, progress=False)
        with torch.no_grad():
            out[split] = (model.embedder.forward_head(feats).numpy(), np.asarray(images.labels), images.class_names)
    pool = (np.concatenate([out["train"][0], out["val"][0]]), np.concatenate([out["train"][1], out["val"][1]]))
    return pool, out["test"][:2], out["train"][2]


def teach(pool, classes, n, rng, names):
    """A model of ``classes`` taught from n random pool images each; (model, embeddings, labels)."""
    from imprinting.build import create_head

    e, y = pool
    model = create_head(e.shape[1], None, [], scale=10.0)
    taught, labels = [], []
    for c in classes:
        pick = rng.choice(np.flatnonzero(y == c), n, replace=False)
        model.add_class(names[c], torch.from_numpy(e[pick]))
        taught.append(e[pick])
        labels += [names[c]] * n
    return model, torch.from_numpy(np.concatenate(taught)), labels


def probs(model, e, scale):
    cos = model.classes.cosines(e).astype(np.float64)
    z = scale * cos
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return cos, p / p.sum(axis=1, keepdims=True)


def main() -> None:
    from imprinting.calibration import calibrate, expected_calibration_error, fit_scale, nll
    from imprinting.report import markdown_table, provenance

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--shots", "-n", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--false-accept", type=float, nargs="+", default=[0.05, 0.2])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    pool, (te, ty), names = features(a.data_root, a.image_size, a.cache)
    rng = np.random.default_rng(a.seed)
    all_classes = np.arange(len(names))
    unknown = np.sort(rng.choice(all_classes, len(names) // 3, replace=False))
    known = np.setdiff1d(all_classes, unknown)
    rows, open_rows = {}, {}
    for n in a.shots:
        for draw in range(a.draws):
            draw_rng = np.random.default_rng([a.seed, n, draw])
            model, emb, labels = teach(pool, all_classes, n, draw_rng, names)
            cal = calibrate(model, emb, labels, "leave-one-out", a.false_accept[0])
            cos, _ = probs(model, te, 1.0)
            y = ty  # the model's class order is the data set's
            oracle = fit_scale(cos, y)
            for name, s in (("s = 10 (imprint create before)", 10.0), ("leave-one-out calibration", cal.scale),
                            ("fitted on the test images (bound)", oracle)):
                _, p = probs(model, te, s)
                correct = p.argmax(axis=1) == y
                r = rows.setdefault((name, n), {"top1": [], "ece": [], "nll": [], "conf": [], "s": []})
                r["top1"].append(100 * correct.mean())
                r["ece"].append(100 * expected_calibration_error(p.max(axis=1), correct))
                r["nll"].append(nll(s, cos, y))
                r["conf"].append(100 * p.max(axis=1).mean())
                r["s"].append(s)
            model, emb, labels = teach(pool, known, n, draw_rng, names)
            best = model.classes.cosines(te).max(axis=1)
            is_known = np.isin(ty, known)
            for target in a.false_accept:
                cal = calibrate(model, emb, labels, "leave-one-out", target)
                o = open_rows.setdefault((target, n), {"far": [], "frr": [], "thr": [], "loo_frr": []})
                o["far"].append(100 * np.mean(best[~is_known] >= cal.unknown_threshold))
                o["frr"].append(100 * np.mean(best[is_known] < cal.unknown_threshold))
                o["thr"].append(cal.unknown_threshold)
                o["loo_frr"].append(100 * cal.false_reject)

    def f(v, d=2):
        return f"{np.mean(v):.{d}f} ± {np.std(v):.{d}f}"

    table = [{"n": n, "scale": name, "s": f(r["s"], 1), "top-1 (%)": f(r["top1"]), "mean confidence (%)": f(r["conf"], 1),
              "ECE (%)": f(r["ece"]), "NLL": f(r["nll"], 3)} for (name, n), r in rows.items()]
    open_table = [{"target false accepts (%)": f"{100 * t:.0f}", "n": n, "threshold (cosine)": f(o["thr"], 3), "false accepts, never-taught test images (%)": f(o["far"], 1),
                   "false rejects, taught classes' test images (%)": f(o["frr"], 1),
                   "false rejects estimated by leave-one-out (%)": f(o["loo_frr"], 1)} for (t, n), o in open_rows.items()]
    prov = provenance([".venv/bin/python", "benchmarks/calibration.py", *sys.argv[1:]],
                      data=f"flowers102: teach from train+val (n per class), held-out = the 6,149 test images; "
                           f"EfficientNet-Lite0 ImageNet features at {a.image_size} px, no FC layer",
                      seed=a.seed, draws=a.draws)
    print("# Calibrated confidence on Flowers-102 (held-out test images)\n")
    for k, v in prov.items():
        print(f"- {k}: {v}")
    print("\n## All 102 classes taught: the probability of the top class\n")
    print(markdown_table(table, ["n", "scale", "s", "top-1 (%)", "mean confidence (%)", "ECE (%)", "NLL"]))
    print(f"\n## {len(known)} classes taught, {len(unknown)} never taught: the automatic unknown threshold\n")
    print(markdown_table(open_table, list(open_table[0])))


if __name__ == "__main__":
    main()
