"""Which rejection score should say "not one of my classes"? Open-set splits, measured.

Per data set, the project's base/novel class split: the *base* classes are never taught and
never tested, they only provide shared statistics (the whitened head's covariance, shrinkage
and corrections, the Mahalanobis covariance, the relative-Mahalanobis background Gaussian).
Per draw (seeded), 2/3 of the *novel* classes are taught from n training photos each (nested
across n), the other 1/3 are never taught. Queries: the test photos of all novel classes
(known = of a taught class) and, for the CUB and Flowers-102 models, far-away photos (the
other data set's test photos, and Omniglot test drawings through the same ImageNet backbone).

Scores (``open_set_scores``): the best cosine (the project's default), the whitened head's
max score and energy, Mahalanobis with a shot-count correction, relative Mahalanobis, k-NN
(k = 1, 5). Metrics: AUROC, FPR at 95 % TPR, AURC. Then the conformal checks of
``imprinting.conformal`` (leave-one-out calibration on the taught examples) and the
pre-declared rule that decides whether any score replaces the best cosine.

Usage::

    .venv/bin/python benchmarks/open_set.py --image-size 224 --draws 20 --out results/open_set.md
    # round 2 (Rule 2, fresh draws), appended to the same file:
    .venv/bin/python benchmarks/open_set.py --image-size 224 --draws 20 --seed 1 --rule 2 \
        --out results/open_set.md --append "..."
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from open_set_scores import (
    RULE_SCORES,
    SCORES,
    BaseStats,
    Queries,
    aurc,
    auroc,
    fpr_at_95,
    score_all,
    unit,
)

ALPHA, COVERAGE = 0.05, 0.9


def efficientnet_sets(root, size: int, far_omniglot: int, seed: int) -> dict:
    """CUB and Flowers-102 (train, test, base/novel) and a seeded sample of Omniglot's test
    drawings of the evaluation alphabets, through ImageNet EfficientNet-Lite0 (cached features)."""
    from imprinting.backbones import create_backbone
    from imprinting.data.features import View, cached_features
    from imprinting.data.splits import base_novel_split
    from imprinting.experiments.data import read_splits

    bb = create_backbone("efficientnet_lite0", pretrained=True)
    pre = bb.preprocess.at_size(size)
    feats = lambda s: cached_features(bb, s, pre, View(), None, False).numpy()
    out = {}
    for ds in ("cub", "flowers102"):
        tr, te, rule = read_splits(ds, root)
        base, novel = base_novel_split(tr, rule)
        out[ds] = {"train": feats(tr), "ytr": np.array(tr.labels), "test": feats(te), "yte": np.array(te.labels),
                   "base": base, "novel": novel, "shots": (1, 5, 20), "conformal": (5, 20)}
    tr, te, rule = read_splits("omniglot", root)
    _, novel = base_novel_split(tr, rule)
    pool = np.flatnonzero(np.isin(te.labels, novel))
    pick = np.sort(np.random.default_rng(seed).choice(pool, far_omniglot, replace=False))
    out["omniglot-far"] = feats(te.subset(pick.tolist(), f"omniglot-test-far{far_omniglot}-seed{seed}"))
    return out


def omniglot_set(root, epochs: int, seed: int) -> dict:
    """The project's Omniglot protocol: conv4 trained from scratch on the background characters
    (``experiments.data.prepare_omniglot``), its frozen backbone features."""
    from imprinting.experiments.data import omniglot_config, prepare_omniglot

    data, _, _, _, history = prepare_omniglot(root, cfg=omniglot_config(epochs, seed), progress=False, seed=seed)
    return {"train": data.train_feats.numpy(), "ytr": np.array(data.train.labels), "test": data.test_feats.numpy(),
            "yte": np.array(data.test.labels), "base": data.base, "novel": data.novel, "shots": (1, 5, 10),
            "conformal": (5, 10), "history": history[-1]}


def taught_loo(u_tr, y_tr, classes):
    """The classes taught from the examples (a ``ClassTable``), and the examples' leave-one-out
    cosines as the product computes them (``calibration.leave_one_out``): (table, cosines,
    the cosines with each example's own class masked out, which examples were scored)."""
    from imprinting.calibration import leave_one_out
    from imprinting.classes import ClassTable

    table = ClassTable(u_tr.shape[1])
    for c in range(classes):
        table.add(f"c{c}", u_tr[y_tr == c])
    cos, scored = leave_one_out(table, u_tr, y_tr)
    others = cos.copy()
    others[np.arange(len(y_tr)), y_tr] = -np.inf
    return table, cos, others, scored


def conformal_check(u_tr, y_tr, classes, u_known, y_known, u_unknown) -> dict:
    """Leave-one-out calibration on the taught examples, measured on the test photos."""
    from scipy.special import softmax

    from imprinting.calibration import fit_scale
    from imprinting.conformal import prediction_set, scores_from

    table, cos, others, scored = taught_loo(u_tr, y_tr, classes)
    scale = fit_scale(cos[scored], y_tr[scored])
    probs = softmax(scale * cos, axis=1)
    cs = scores_from(cos[scored], others.max(axis=1)[scored], probs[scored], y_tr[scored])
    thr, q = cs.unknown_threshold(ALPHA), cs.set_threshold(COVERAGE)
    ck = table.cosines(u_known.astype(np.float32)).astype(np.float64)
    best_k = ck.max(axis=1)
    pk = softmax(scale * ck, axis=1)
    sets = [prediction_set(p, q) for p in pk]
    best_u = table.cosines(u_unknown.astype(np.float32)).max(axis=1)
    return {"flagged": float(np.mean(best_k < thr)) if thr is not None else 0.0,
            "coverage": float(np.mean([y in s for y, s in zip(y_known, sets)])),
            "set size": float(np.mean([len(s) for s in sets])),
            "FA estimated": cs.false_accept_at(thr),
            "FA measured": float(np.mean(best_u >= thr)) if thr is not None else 1.0,
            "examples": cs.n, "threshold": thr, "scale": scale}


def run_dataset(name: str, d: dict, far: dict, draws: int, seed: int, log) -> dict:
    t0 = time.time()
    base_tr = np.flatnonzero(np.isin(d["ytr"], d["base"]))
    stats = BaseStats(d["train"][base_tr], d["ytr"][base_tr], seed)
    log(f"{name}: base stats {stats.info} ({time.time() - t0:.0f}s)")
    novel = np.array(d["novel"])
    qi = np.flatnonzero(np.isin(d["yte"], novel))
    parts = [d["test"][qi]] + [f for f in far.values()]
    bounds = np.cumsum([0] + [len(p) for p in parts])
    q = Queries(stats, np.concatenate(parts))
    u_all = unit(np.concatenate(parts))
    res = {"metrics": [], "conformal": [], "info": stats.info, "queries": len(qi),
           "far": {k: len(v) for k, v in far.items()}}
    for draw in range(draws):
        rng = np.random.default_rng([seed, draw])
        perm = rng.permutation(novel)
        taught = np.sort(perm[: round(2 * len(novel) / 3)])
        index = {int(c): i for i, c in enumerate(taught)}
        order = {int(c): rng.permutation(np.flatnonzero(d["ytr"] == c)) for c in taught}
        y_q = d["yte"][qi]
        known = np.isin(y_q, taught)
        label = np.array([index.get(int(y), -1) for y in y_q])
        for n in d["shots"]:
            ex = np.concatenate([order[int(c)][:n] for c in taught])
            y_tr = np.array([index[int(c)] for c in d["ytr"][ex]])
            scores, temp = score_all(stats, d["train"][ex], y_tr, len(taught), q)
            for s in SCORES:
                v, pred = scores[s]
                vq, pk = v[: bounds[1]], pred[: bounds[1]]
                row = {"draw": draw, "n": n, "score": s, "auroc": auroc(vq[known], vq[~known]),
                       "fpr95": fpr_at_95(vq[known], vq[~known]), "aurc": aurc(vq[known], pk[known] == label[known]),
                       "temperature": temp}
                for j, far_name in enumerate(far):
                    row[f"far {far_name}"] = auroc(vq[known], v[bounds[j + 1]: bounds[j + 2]])
                res["metrics"].append(row)
            if n in d["conformal"]:
                u_q = u_all[: bounds[1]]
                c = conformal_check(unit(d["train"][ex]), y_tr, len(taught), u_q[known], label[known], u_q[~known])
                res["conformal"].append({"draw": draw, "n": n, **c})
        log(f"{name}: draw {draw} done ({time.time() - t0:.0f}s)")
    res["seconds"] = time.time() - t0
    return res


def ms(values, digits=3) -> str:
    v = np.asarray(values, np.float64)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0:.{digits}f}"


def metric_table(results: dict, metric: str, title: str) -> list[str]:
    lines = [f"### {title}", "", "| data set | n | " + " | ".join(SCORES) + " |", "|---|---|" + "---|" * len(SCORES)]
    for ds, r in results.items():
        for n in dict.fromkeys(m["n"] for m in r["metrics"]):
            cells = [ms([m[metric] for m in r["metrics"] if m["n"] == n and m["score"] == s]) for s in SCORES]
            lines.append(f"| {ds} | {n} | " + " | ".join(cells) + " |")
    return lines + [""]


def far_table(results: dict) -> list[str]:
    lines = ["### AUROC, taught classes' test photos vs far-away photos (mean ± std over draws)", "",
             "| model | far-away photos | n | " + " | ".join(SCORES) + " |", "|---|---|---|" + "---|" * len(SCORES)]
    for ds, r in results.items():
        for far_name in r["far"]:
            for n in dict.fromkeys(m["n"] for m in r["metrics"]):
                cells = [ms([m[f"far {far_name}"] for m in r["metrics"] if m["n"] == n and m["score"] == s])
                         for s in SCORES]
                lines.append(f"| {ds} | {far_name} ({r['far'][far_name]}) | {n} | " + " | ".join(cells) + " |")
    return lines + [""]


def conformal_table(results: dict) -> list[str]:
    lines = [(f"### Conformal checks: α = {ALPHA} (unknown flag), coverage {COVERAGE} (prediction sets), "
              "measured on the taught classes' test photos"), "",
             ("| data set | n | draws | examples | flagged mean | flagged worst | coverage mean | coverage worst | "
              "set size | FA estimated | FA measured mean | FA measured worst | flag goal | coverage goal |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds, r in results.items():
        for n in dict.fromkeys(c["n"] for c in r["conformal"]):
            c = [x for x in r["conformal"] if x["n"] == n]
            f = np.array([x["flagged"] for x in c])
            cov = np.array([x["coverage"] for x in c])
            fa_e = np.array([x["FA estimated"] for x in c], np.float64)
            fa_m = np.array([x["FA measured"] for x in c])
            ok_f = "met" if f.max() <= ALPHA + 0.02 else ("mean met, worst not" if f.mean() <= ALPHA + 0.02 else "missed")
            ok_c = ("met" if cov.min() >= COVERAGE - 0.02 else
                    ("mean met, worst not" if cov.mean() >= COVERAGE - 0.02 else "missed"))
            lines.append(f"| {ds} | {n} | {len(c)} | {c[0]['examples']} | {f.mean():.3f} | {f.max():.3f} | "
                         f"{cov.mean():.3f} | {cov.min():.3f} | {np.mean([x['set size'] for x in c]):.2f} | "
                         f"{fa_e.mean():.3f} | {fa_m.mean():.3f} | {fa_m.max():.3f} | {ok_f} | {ok_c} |")
    return lines + [""]


RULE2 = ("Rule 2 (declared 2026-12-07 before its run): a score replaces the best cosine as the default only if "
         "(a) on never-taught classes its AUROC gain over the cosine, paired by draw and averaged over the shot "
         "counts, exceeds 2 standard errors of the paired differences on at least 2 of the 3 data sets, and (b) on "
         "every far-away pair (CUB model shown Flowers-102 and Omniglot, Flowers-102 model shown CUB and Omniglot) "
         "at every shot count its mean AUROC is at most 0.01 below the cosine's. If several scores pass, the largest "
         "mean near-class gain wins. The draws are new: seed 1 (the first round used seed 0).")
FAR_PAIRS = (("cub", "flowers102 test"), ("cub", "omniglot test"), ("flowers102", "cub test"),
             ("flowers102", "omniglot test"))


def near_gain(r: dict, s: str) -> tuple[float, float]:
    """Score ``s``'s AUROC gain over the cosine on never-taught classes, per draw averaged over
    the shot counts: (mean, 2 standard errors of the paired per-draw differences)."""
    per_draw: dict = {}
    for m in r["metrics"]:
        if m["score"] in (s, "cosine"):
            per_draw.setdefault(m["draw"], {}).setdefault(m["score"], []).append(m["auroc"])
    diff = np.array([np.mean(v[s]) - np.mean(v["cosine"]) for _, v in sorted(per_draw.items())])
    return float(diff.mean()), float(2 * diff.std(ddof=1) / np.sqrt(len(diff)))


def rule(results: dict) -> tuple[list[str], str]:
    """A score replaces the best cosine only if, on at least two of the three data sets, its
    per-draw AUROC gain over the cosine (averaged over the three shot counts, paired by draw)
    has a mean above 2 standard errors; among several, the largest mean gain over the data
    sets wins."""
    lines = ["### The rule: AUROC gain over the best cosine, paired by draw, averaged over n (mean / 2 SE)", "",
             "Declared before the run: " + " ".join(rule.__doc__.split()) + " Candidates: "
             + ", ".join(RULE_SCORES[1:]) + " (not the diagnostic).", "",
             "| score | " + " | ".join(results) + " | data sets beaten |", "|---|" + "---|" * (len(results) + 1)]
    winners = {}
    for s in RULE_SCORES[1:]:
        g = [near_gain(r, s) for r in results.values()]
        beaten = sum(m > se for m, se in g)
        cells = [f"{m:+.4f} / {se:.4f}{' **beats**' if m > se else ''}" for m, se in g]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {beaten} |")
        if beaten >= 2:
            winners[s] = float(np.mean([m for m, _ in g]))
    outcome = (f"**{max(winners, key=winners.get)}** replaces the best cosine (qualifying: "
               + ", ".join(f"{k} {v:+.4f}" for k, v in winners.items()) + ")") if winners else \
        "no score qualifies: **the best cosine stays the default**"
    return lines + ["", f"Outcome: {outcome}.", ""] + per_shot(results), outcome


def far_gap(results: dict, s: str, ds: str, far: str, n: int) -> float:
    """Mean far-away AUROC of ``s`` minus the cosine's (model ``ds`` shown ``far``, n shots)."""
    v = lambda name: np.mean([m[f"far {far}"] for m in results[ds]["metrics"] if m["n"] == n and m["score"] == name])
    return float(v(s) - v("cosine"))


def rule2(results: dict) -> tuple[list[str], str]:
    """Rule 2, applied mechanically: (a) the near-class test of Rule 1, (b) the far-away guard."""
    missing = [p for p in FAR_PAIRS if p[0] not in results or p[1] not in results[p[0]]["far"]]
    assert len(results) == 3 and not missing, f"Rule 2 needs all three data sets and every far-away pair: {missing}"
    shots = {ds: list(dict.fromkeys(m["n"] for m in r["metrics"])) for ds, r in results.items()}
    cols = [(ds, far, n) for ds, far in FAR_PAIRS for n in shots[ds]]
    lines = [("### Rule 2: (a) near-class AUROC gain over the cosine, paired by draw, averaged over n (mean / 2 SE); "
              "(b) the worst far-away mean AUROC minus the cosine's"), "", "> " + RULE2, "",
             "Candidates: " + ", ".join(SCORES[1:]) + ".", "",
             ("| score | " + " | ".join(results) + " | (a) data sets beaten | (b) worst far-away gap (where) | "
              "(a) | (b) | passes |"), "|---|" + "---|" * (len(results) + 5)]
    passing, far_rows = {}, []
    for s in SCORES[1:]:
        g = [near_gain(r, s) for r in results.values()]
        beaten = sum(m > se for m, se in g)
        gaps = {c: far_gap(results, s, *c) for c in cols}
        worst = min(gaps, key=gaps.get)
        ok_a, ok_b = beaten >= 2, all(v >= -0.01 for v in gaps.values())
        cells = [f"{m:+.4f} / {se:.4f}{' **beats**' if m > se else ''}" for m, se in g]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {beaten} | {gaps[worst]:+.4f} ({worst[0]} model, "
                     f"{worst[1]}, n={worst[2]}) | {'yes' if ok_a else 'no'} | {'yes' if ok_b else 'no'} | "
                     f"{'**yes**' if ok_a and ok_b else 'no'} |")
        far_rows.append(f"| {s} | " + " | ".join(f"{gaps[c]:+.4f}" for c in cols) + " |")
        if ok_a and ok_b:
            passing[s] = float(np.mean([m for m, _ in g]))
    outcome = (f"**{max(passing, key=passing.get)}** replaces the best cosine (passing, mean near-class "
               "gain: " + ", ".join(f"{k} {v:+.4f}" for k, v in passing.items()) + ")") if passing else \
        "no score passes: **the best cosine stays the default**"
    far_lines = ["### Far-away mean AUROC minus the cosine's, per pair and n (Rule 2 (b) needs every cell >= -0.01)",
                 "", "| score | " + " | ".join(f"{ds} model / {far} n={n}" for ds, far, n in cols) + " |",
                 "|---|" + "---|" * len(cols)] + far_rows
    return lines + ["", f"Outcome: {outcome}.", ""] + far_lines + [""] + per_shot(results), outcome


def per_shot(results: dict) -> list[str]:
    """For reading only (the rule above decides): the same paired gain at each shot count."""
    cols = [(ds, n) for ds, r in results.items() for n in dict.fromkeys(m["n"] for m in r["metrics"])]
    lines = ["### AUROC gain over the best cosine at each n, paired by draw (mean ± 2 SE; not the rule)", "",
             "| score | " + " | ".join(f"{ds} n={n}" for ds, n in cols) + " |", "|---|" + "---|" * len(cols)]
    for s in SCORES[1:]:
        cells = []
        for ds, n in cols:
            by = {(m["score"], m["draw"]): m["auroc"] for m in results[ds]["metrics"] if m["n"] == n}
            diff = np.array([by[(s, dr)] - by[("cosine", dr)] for (name, dr) in by if name == s])
            cells.append(f"{diff.mean():+.3f} ± {2 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0:.3f}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="/work/shared/data")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--far-omniglot", type=int, default=1000, help="Omniglot test drawings shown as far-away photos")
    ap.add_argument("--omniglot-epochs", type=int, default=5)
    ap.add_argument("--datasets", nargs="+", default=["cub", "flowers102", "omniglot"])
    ap.add_argument("--out", default="results/open_set.md")
    ap.add_argument("--json", default=None, help="Also write every per-draw number here.")
    ap.add_argument("--rule", type=int, choices=(1, 2), default=1, help="1: round 1's rule; 2: Rule 2 (far-away guard)")
    ap.add_argument("--append", default=None, metavar="TITLE",
                    help="Append to --out under a '### TITLE' heading (tables one level down) instead of replacing it.")
    a = ap.parse_args(argv)
    start = time.time()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    log = lambda msg: print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)
    eff = efficientnet_sets(a.data_root, a.image_size, a.far_omniglot, a.seed)
    log("EfficientNet-Lite0 features ready")
    results, notes = {}, {}
    far_of = {"cub": {"flowers102 test": eff["flowers102"]["test"], "omniglot test": eff["omniglot-far"]},
              "flowers102": {"cub test": eff["cub"]["test"], "omniglot test": eff["omniglot-far"]}}
    for ds in a.datasets:
        if ds == "omniglot":
            d = omniglot_set(a.data_root, a.omniglot_epochs, a.seed)
            notes["omniglot"] = f"conv4 base training {a.omniglot_epochs} epochs, final {json.dumps(d['history'])}"
            log("omniglot conv4 trained")
        else:
            d = eff[ds]
        results[ds] = run_dataset(ds, d, far_of.get(ds, {}), a.draws, a.seed, log)
    import os
    import subprocess

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()

    head = [
        "# Open-set rejection: which score says \"not one of my classes\"" if not a.append else f"### {a.append}", "",
        f"- command: `.venv/bin/python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:] if argv is None else argv)}`",
        (f"- date: {when}; run time {time.time() - start:.0f} s; git HEAD {commit} (others' uncommitted src/ edits "
         "may be in the tree)"),
        f"- machine: {platform.machine()}, {cpu}, {os.cpu_count()} cores (shared), no GPU; python {platform.python_version()}",
        f"- seed {a.seed}; draw d uses numpy `default_rng([{a.seed}, d])`; {a.draws} draws per data set and shot count",
        f"- CUB / Flowers-102: ImageNet EfficientNet-Lite0 at {a.image_size} px, pooled 1280-d features (frozen, cached)",
        (f"- Omniglot: {notes.get('omniglot', 'not run')}; far-away Omniglot photos: {a.far_omniglot} test drawings "
         f"of the evaluation alphabets (seed {a.seed}) through EfficientNet-Lite0 at {a.image_size} px"),
    ]
    for ds, r in results.items():
        head.append(f"- {ds}: {r['info']}; {r['queries']} novel-class test photos; far-away {r['far']}; "
                    f"{r['seconds']:.0f} s")
    rule_lines, outcome = (rule if a.rule == 1 else rule2)(results)
    body = (metric_table(results, "auroc", "AUROC, taught vs never-taught classes' test photos (mean ± std over draws)")
            + metric_table(results, "fpr95", "FPR at 95 % TPR (lower is better)")
            + metric_table(results, "aurc", "AURC of the known photos, each score with its own classifier "
                           "(lower is better)")
            + far_table(results) + conformal_table(results) + rule_lines)
    if a.append:  # one heading level down, under the section's own heading
        body = [("#" + ln) if ln.startswith("### ") else ln for ln in body]
    text = "\n".join(head + ([""] if a.append else ["", "## Tables", ""]) + body)
    if a.append:
        with open(a.out, "a") as f:
            f.write("\n" + text + "\n")
    else:
        Path(a.out).write_text(text + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(results, default=float))
    print(text)
    log(f"outcome (rule {a.rule}): {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
