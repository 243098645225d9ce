"""Round 3 of the open-set benchmark: relative Mahalanobis under the product's conditions.

Round 2 (``benchmarks/open_set.py --rule 2``) picked *rel. Mahalanobis uncorrected* (RM) with
every class taught from the same n and its statistics from each data set's base classes. This
script measures what decides how the product can use it (``results/open_set.md``, "Round 3"):

* **mixed shot counts**: each taught class gets its own n, drawn uniformly from {1, 2, 5, 10, 20}
  (Omniglot: {1, 2, 5, 10});
* **statistics from the taught examples only** (*RM-taught*: what ``imprint create --from-folder``
  and the service have) next to the base-class statistics of round 2 (*RM-base*: what an
  ``imprint train`` model has), with a fallback to the cosine when the taught set is too small;
* a **leave-one-out RM score** for the conformal threshold, and the conformal false-reject check
  (share of taught-class test photos flagged at α = 0.05 and 0.1) for each score;
* the cost (D x D statistics, scoring time per 1,000 photos, fitting time);

then Rule 3, declared in ``results/open_set.md`` before the run, applied by ``rule3``
(``open_set_product_report.py``: the round's design and its tables).

Usage::

    for ds in cub flowers102 omniglot; do flock /tmp/imprinting-bench.lock .venv/bin/python \
        benchmarks/open_set_product.py --seed 2 --draws 20 --datasets $ds --json /tmp/open_set3/$ds.json; done
    .venv/bin/python benchmarks/open_set_product.py --report /tmp/open_set3/{cub,flowers102,omniglot}.json \
        --out results/open_set.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from open_set import efficientnet_sets, omniglot_set, taught_loo
from open_set_product_report import ALPHAS, SCORES, SHOTS, machine, report, tables
from open_set_scores import BaseStats, Queries, auroc, shrunk_precision, unit


# -- relative Mahalanobis (uncorrected) ----------------------------------------------------------
class RM:
    """Relative Mahalanobis without a shot term: s(u) = -(min_c (u-m_c)'P(u-m_c) - (u-mu0)'P0(u-mu0))
    on L2-normalized features u; P the shrunk within-class precision, mu0/P0 the background Gaussian."""

    def __init__(self, precision: np.ndarray, mu0: np.ndarray, precision0: np.ndarray, info: dict):
        self.P, self.mu0, self.P0, self.info = precision, mu0, precision0, info

    def query_parts(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u P, u'P u, background distance) of the photos u: what every model of a draw reuses."""
        up = u @ self.P
        c = u - self.mu0
        return up, np.einsum("nd,nd->n", up, u), np.einsum("nd,nd->n", c @ self.P0, c)

    def class_d2(self, parts, means: np.ndarray) -> np.ndarray:
        up, upu, _ = parts
        return upu[:, None] - 2 * up @ means.T + np.einsum("cd,cd->c", means @ self.P, means)[None, :]

    def scores(self, parts, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d2 = self.class_d2(parts, means)
        return -(d2.min(axis=1) - parts[2]), d2.argmin(axis=1)

    def loo(self, u: np.ndarray, y: np.ndarray, means: np.ndarray, counts: np.ndarray):
        """Leave-one-out scores of the taught examples u (labels y): each example of a class with
        n >= 2 against its own class mean without it, m^(-i) = (n m - u_i) / (n - 1), the other
        classes' means as taught; P, mu0, P0 as fitted (with the example). Returns (known (N,),
        others (N,): its class left out entirely, scored (N,) bool: n >= 2)."""
        parts = self.query_parts(u)
        d2 = self.class_d2(parts, means)
        n = counts[y].astype(np.float64)
        ok = n >= 2
        idx = np.flatnonzero(ok)
        m1 = (means[y[ok]] * n[ok, None] - u[ok]) / (n[ok, None] - 1)
        diff = u[ok] - m1
        d2[idx, y[ok]] = np.einsum("nd,nd->n", diff @ self.P, diff)
        others = d2.copy()
        others[np.arange(len(y)), y] = np.inf
        return -(d2.min(axis=1) - parts[2]), -(others.min(axis=1) - parts[2]), ok


def rm_from_base(stats: BaseStats) -> RM:
    """Round 2's statistics (the data set's base classes): exactly ``open_set_scores``'s."""
    return RM(stats.precision, stats.mu0, stats.precision0, {"shrinkage": stats.maha_shrinkage})


def rm_from_taught(u: np.ndarray, y: np.ndarray, seed: int) -> tuple[RM | None, str]:
    """RM's statistics from the taught examples only (unit rows u, labels y), or (None, why)
    when the declared fallback applies: fewer than 3 classes with >= 2 examples, or ``choose``
    can score no simulated episode.

    Within-class scatter of the classes with >= 2 examples / (their examples - their classes);
    background mean and ``np.cov`` of all taught examples; both shrunk towards their mean
    eigenvalue by the shrinkage ``heads.choose`` picks (corrections (0.0,), candidates
    ``SHRINKAGES``, as ``BaseStats`` does on base data) on the classes with >= 2 examples,
    with ``fit_head``'s shot counts (1, 2, 5, 10 below their median count) and 4 episodes."""
    from imprinting.heads import SHRINKAGES, choose, within_class_scatter

    counts = np.bincount(y)
    multi = counts >= 2
    if multi.sum() < 3:
        return None, "fewer than 3 classes with >= 2 examples"
    keep = multi[y]
    x2, y2 = u[keep], y[keep]
    median = int(np.median(counts[multi]))
    shots = tuple(n for n in (1, 2, 5, 10) if n < median) or (1,)
    try:
        shrink, _, _ = choose(x2 - x2.mean(axis=0), y2, shots, episodes=4, seed=seed, shrinkages=SHRINKAGES,
                              corrections=(0.0,))
    except ValueError:
        return None, "choose scored no episode"
    scatter, dof = within_class_scatter(x2, y2)
    precision = shrunk_precision(scatter / dof, shrink)
    precision0 = shrunk_precision(np.cov(u, rowvar=False), shrink)
    return RM(precision, u.mean(axis=0), precision0, {"shrinkage": shrink, "shots": shots}), ""


def _sm_forms(z: np.ndarray, g: np.ndarray, zr: np.ndarray, ak: float) -> np.ndarray:
    """v' (A - ak r r')^-1 v for the rows z = V'v, with A^-1 = V diag(g) V' and zr = V'r
    (Sherman-Morrison)."""
    zg = zr * g
    return (z**2) @ g + ak * (z @ zg) ** 2 / (1 - ak * float(zr @ zg))


def exact_loo_taught(rm: RM, u: np.ndarray, y: np.ndarray, means: np.ndarray, counts: np.ndarray):
    """A diagnostic (not the declared LOO): RM-taught's leave-one-out scores with *every*
    statistic refitted without the example (its class mean, the within-class covariance and the
    background mean and covariance; the shrinkage stays as chosen), by rank-one downdates of the
    two scatters (eigendecomposed once) and Sherman-Morrison. Returns (known, others, scored)."""
    lam, dim = rm.info["shrinkage"], u.shape[1]
    multi = counts >= 2
    keep = multi[y]
    res = u - means[y]
    S = res[keep].T @ res[keep]
    dof = int(keep.sum() - multi.sum())
    e, V = np.linalg.eigh(S)
    trS = float(np.trace(S))
    N = len(u)
    mu = u.mean(axis=0)
    s0 = u - mu
    T = s0.T @ s0
    e0, V0 = np.linalg.eigh(T)
    trT = float(np.trace(T))
    MV, UV, RV, SV0 = means @ V, u @ V, res @ V, s0 @ V0
    known = np.full(N, -np.inf)
    others = np.full(N, -np.inf)
    for i in np.flatnonzero(keep):
        n = counts[y[i]]
        k = n / (n - 1)
        r2 = float(res[i] @ res[i])
        a = (1 - lam) / (dof - 1)
        b = lam * (trS - k * r2) / (dim * (dof - 1))
        g = 1 / (a * e + b)
        z = UV[i][None, :] - MV
        z[y[i]] = k * RV[i]
        d2 = _sm_forms(z, g, RV[i], a * k)
        k0 = N / (N - 1)
        a0 = (1 - lam) / (N - 2)
        b0 = lam * (trT - k0 * float(s0[i] @ s0[i])) / (dim * (N - 2))
        g0 = 1 / (a0 * e0 + b0)
        d0 = float(_sm_forms(k0 * SV0[i][None, :], g0, SV0[i], a0 * k0)[0])
        known[i] = -(d2.min() - d0)
        d2[y[i]] = np.inf
        others[i] = -(d2.min() - d0)
    return known, others, keep


def balanced_threshold(scores: np.ndarray, labels: np.ndarray, alpha: float) -> float:
    """A diagnostic threshold: every calibration class weighs the same (each example 1 / its
    class's scored examples, normalized); the largest score with at most ``alpha`` of the weight
    strictly below it (no finite-sample correction)."""
    _, inv, cnt = np.unique(labels, return_inverse=True, return_counts=True)
    w = 1.0 / cnt[inv]
    w = w / w.sum()
    order = np.argsort(scores, kind="stable")
    below = np.concatenate([[0.0], np.cumsum(w[order])[:-1]])
    return float(scores[order][np.flatnonzero(below <= alpha + 1e-12)[-1]])


# -- the cosine (the product's path) -------------------------------------------------------------
def cosine_model(u_tr: np.ndarray, y_tr: np.ndarray, classes: int):
    """(ClassTable, the examples' leave-one-out (known, others, scored)): the product's
    ``calibration.leave_one_out`` (examples of classes with n >= 2 scored)."""
    table, cos, others, scored = taught_loo(u_tr, y_tr, classes)
    return table, (cos.max(axis=1), others.max(axis=1), scored)


def conformal(cal, y_tr: np.ndarray, s_known: np.ndarray, s_unknown: np.ndarray, n_known: np.ndarray,
              shots) -> dict:
    """{"examples", "alpha a": {flagged, FA estimated, FA measured, flagged by n, balanced flagged}}
    with the product's threshold (``ConformalScores.unknown_threshold``) on the calibration
    scores ``cal`` = (known, others, scored); "balanced flagged": ``balanced_threshold`` instead."""
    from imprinting.conformal import ConformalScores

    known, others, scored = cal
    cs = ConformalScores(known=known[scored], others=others[scored], nonconformity=np.zeros(int(scored.sum())))
    out = {"examples": cs.n}
    for a in ALPHAS:
        thr = cs.unknown_threshold(a)
        flag = (s_known < thr) if thr is not None else np.zeros(len(s_known), bool)
        bal = balanced_threshold(known[scored], y_tr[scored], a)
        out[f"alpha {a}"] = {"flagged": float(flag.mean()), "FA estimated": cs.false_accept_at(thr),
                             "FA measured": float(np.mean(s_unknown >= thr)) if thr is not None else 1.0,
                             "flagged by n": {str(n): float(flag[n_known == n].mean()) for n in shots
                                              if (n_known == n).any()},
                             "balanced flagged": float(np.mean(s_known < bal))}
    return out


# -- one data set --------------------------------------------------------------------------------
def run_dataset(name: str, d: dict, far: dict, draws: int, seed: int, log) -> dict:
    from imprinting.heads import class_means

    t0 = time.time()
    base_tr = np.flatnonzero(np.isin(d["ytr"], d["base"]))
    stats = BaseStats(d["train"][base_tr], d["ytr"][base_tr], seed)
    rm_base = rm_from_base(stats)
    log(f"{name}: base stats {stats.info} ({time.time() - t0:.0f}s)")
    novel = np.array(d["novel"])
    qi = np.flatnonzero(np.isin(d["yte"], novel))
    parts = [d["test"][qi]] + list(far.values())
    bounds = np.cumsum([0] + [len(p) for p in parts])
    u_all = unit(np.concatenate(parts))
    q = Queries(stats, np.concatenate(parts))  # round 2's query parts under the base statistics
    base_parts = (q.up, q.upu, q.d0)
    shots = SHOTS[name]
    per_class = np.bincount(d["ytr"])
    res = {"draws": [], "info": stats.info, "queries": len(qi), "far": {k: len(v) for k, v in far.items()},
           "shots": list(shots), "classes": len(novel)}
    y_q = d["yte"][qi]
    for draw in range(draws):
        rng = np.random.default_rng([seed, draw])
        perm = rng.permutation(novel)
        taught = np.sort(perm[: round(2 * len(novel) / 3)])
        n_of = rng.choice(shots, size=len(taught))
        clipped = int(np.sum(n_of > per_class[taught]))
        index = {int(c): i for i, c in enumerate(taught)}
        ex = np.concatenate([rng.permutation(np.flatnonzero(d["ytr"] == c))[:n] for c, n in zip(taught, n_of)])
        y_tr = np.array([index[int(c)] for c in d["ytr"][ex]])
        u_tr = unit(d["train"][ex])
        known = np.isin(y_q, taught)
        label = np.array([index.get(int(y), -1) for y in y_q])
        n_known = np.array([n_of[i] for i in label[known]])
        means, counts = class_means(u_tr, y_tr, len(taught))
        row = {"draw": draw, "taught": len(taught), "examples": len(ex), "clipped": clipped,
               "classes per n": {str(n): int(np.sum(n_of == n)) for n in shots}}
        # the three scores on every query photo (near and far), and their calibration scores
        table, cal_cos = cosine_model(u_tr, y_tr, len(taught))
        s = {"cosine": (u_all @ unit(means * counts[:, None]).T).max(axis=1)}
        s["RM-base"], _ = rm_base.scores(base_parts, means)
        cal = {"cosine": cal_cos, "RM-base": rm_base.loo(u_tr, y_tr, means, counts)}
        t1 = time.time()
        rm_taught, why = rm_from_taught(u_tr, y_tr, seed)
        row["taught fit s"] = time.time() - t1
        row["fallback"] = why
        if rm_taught is None:
            s["RM-taught"], cal["RM-taught"] = s["cosine"], cal["cosine"]
        else:
            row["taught shrinkage"] = rm_taught.info["shrinkage"]
            s["RM-taught"], _ = rm_taught.scores(rm_taught.query_parts(u_all), means)
            cal["RM-taught"] = rm_taught.loo(u_tr, y_tr, means, counts)
            exact = exact_loo_taught(rm_taught, u_tr, y_tr, means, counts)
        # the cosine's threshold is compared with the cosines a prediction computes (float32 table)
        cos32 = table.cosines(u_all[: bounds[1]].astype(np.float32)).astype(np.float64).max(axis=1)
        for name_s in SCORES:
            v = s[name_s][: bounds[1]]
            r = {"auroc": auroc(v[known], v[~known])}
            for j, far_name in enumerate(far):
                r[f"far {far_name}"] = auroc(v[known], s[name_s][bounds[j + 1]: bounds[j + 2]])
            r["auroc by n"] = {str(n): auroc(v[known][n_known == n], v[~known]) for n in shots
                               if (n_known == n).any()}
            vc = cos32 if name_s == "cosine" or (name_s == "RM-taught" and rm_taught is None) else v
            r.update(conformal(cal[name_s], y_tr, vc[known], vc[~known], n_known, shots))
            if name_s == "RM-taught":  # the diagnostic: every statistic refitted without the example
                r["exact"] = (conformal(exact, y_tr, v[known], v[~known], n_known, shots) if rm_taught is not None
                              else {k: v_ for k, v_ in r.items() if k.startswith("alpha") or k == "examples"})
            row[name_s] = r
        res["draws"].append(row)
        log(f"{name}: draw {draw} done ({time.time() - t0:.0f}s){' fallback: ' + why if rm_taught is None else ''}")
    res["cost"] = cost(rm_base, u_all, means, counts)
    res["seconds"] = time.time() - t0
    return res


def cost(rm: RM, u_all: np.ndarray, means: np.ndarray, counts: np.ndarray, photos: int = 1000, repeats: int = 7) -> dict:
    """Scoring time per ``photos`` photos (median of ``repeats``, float64 numpy on this machine)
    of the cosine and of RM, as measured here (two D x D products) and folded into one D x D
    quadratic form (Q = P - P0; what a product would store), for the last draw's classes."""
    u = u_all[:photos]
    t = unit(means * counts[:, None])
    q = rm.P - rm.P0
    w = means @ rm.P
    b = np.einsum("cd,cd->c", w, means)
    p0m = rm.P0 @ rm.mu0
    c0 = float(rm.mu0 @ p0m)

    def folded(x):
        return -(np.einsum("nd,nd->n", x @ q, x) + 2 * x @ p0m - c0 + (b[None, :] - 2 * x @ w.T).min(axis=1))

    ref, _ = rm.scores(rm.query_parts(u), means)
    assert np.allclose(folded(u), ref, atol=1e-6 * max(1.0, float(np.abs(ref).max()))), "folded RM differs"

    def timed(f):
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts)) * 1000 * (1000 / len(u))

    return {"classes": len(means), "D": int(u.shape[1]),
            "cosine ms": timed(lambda: (u @ t.T).max(axis=1)),
            "RM ms (P and P0)": timed(lambda: rm.scores(rm.query_parts(u), means)),
            "RM ms (one D x D form)": timed(lambda: folded(u))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="/work/shared/data")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--far-omniglot", type=int, default=1000)
    ap.add_argument("--far-seed", type=int, default=1,
                    help="which seeded sample of Omniglot drawings is shown as far-away photos (1: round 2's, cached)")
    ap.add_argument("--omniglot-epochs", type=int, default=5)
    ap.add_argument("--datasets", nargs="+", default=["cub", "flowers102", "omniglot"])
    ap.add_argument("--json", default=None, help="Write this run's per-draw numbers here (for --report).")
    ap.add_argument("--report", nargs="+", default=None, metavar="JSON",
                    help="Measure nothing: the tables and Rule 3 from these runs' JSON files.")
    ap.add_argument("--out", default=None, help="With --report: append the tables to this markdown file.")
    ap.add_argument("--title", default="Round 3 run: the script's output")
    a = ap.parse_args(argv)
    if a.report:
        return report(a.report, a.out, a.title)
    start = time.time()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    log = lambda msg: print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)
    results, meta = {}, {}
    if {"cub", "flowers102"} & set(a.datasets):
        eff = efficientnet_sets(a.data_root, a.image_size, a.far_omniglot, a.far_seed)
        log("EfficientNet-Lite0 features ready")
        far_of = {"cub": {"flowers102 test": eff["flowers102"]["test"], "omniglot test": eff["omniglot-far"]},
                  "flowers102": {"cub test": eff["cub"]["test"], "omniglot test": eff["omniglot-far"]}}
        meta["far"] = (f"CUB / Flowers-102: ImageNet EfficientNet-Lite0 at {a.image_size} px, 1280-d (cached); far-away "
                       f"Omniglot: {a.far_omniglot} test drawings (sample seed {a.far_seed}) through the same backbone")
    for ds in a.datasets:
        if ds == "omniglot":
            d = omniglot_set(a.data_root, a.omniglot_epochs, a.seed)
            meta["omniglot"] = (f"Omniglot: conv4 base training {a.omniglot_epochs} epochs (seed {a.seed}), final "
                                f"{json.dumps(d['history'])}")
            log("omniglot conv4 trained")
            results[ds] = run_dataset(ds, d, {}, a.draws, a.seed, log)
        else:
            results[ds] = run_dataset(ds, eff[ds], far_of[ds], a.draws, a.seed, log)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    meta.update({"command": f".venv/bin/python benchmarks/{Path(__file__).name} "
                            f"{shlex.join(sys.argv[1:] if argv is None else argv)}",
                 "started": when, "seconds": time.time() - start, "commit": commit, "machine": machine(),
                 "seed": a.seed, "draws": a.draws})
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"meta": meta, "results": results},
                                           default=lambda o: o.tolist() if hasattr(o, "tolist") else float(o)))
    print("\n".join(tables(results)))
    log(f"done: {meta['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
