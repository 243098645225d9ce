"""Rejection scores and their metrics for ``benchmarks/open_set.py`` (numpy only).

Every score is "higher = more known" and comes with the classifier it belongs to (its argmax),
so the risk-coverage curve ranks each score's own predictions. Statistics that need data
beyond the taught examples (covariances, shrinkage, the head's corrections, the background
Gaussian) come from a data set's *base* classes only: classes that are never taught and never
tested in the open-set draws.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

RULE_SCORES = ("cosine", "whitened max", "whitened energy", "Mahalanobis", "rel. Mahalanobis", "kNN k=1", "kNN k=5")
# added after round 1 showed relative Mahalanobis failing on far-away photos at n = 1 (is it the
# shot correction, which scales the class term and not the background's?): a diagnostic in round 1
# (Rule 1's candidates are RULE_SCORES), a candidate in round 2 (Rule 2's candidates are SCORES)
SCORES = (*RULE_SCORES, "rel. Mahalanobis uncorrected")


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def shrunk_precision(cov: np.ndarray, shrinkage: float) -> np.ndarray:
    d = cov.shape[0]
    return np.linalg.inv((1 - shrinkage) * cov + shrinkage * (np.trace(cov) / d) * np.eye(d))


class BaseStats:
    """What each score needs from the base classes' training features ``raw`` labelled ``y``."""

    def __init__(self, raw: np.ndarray, y: np.ndarray, seed: int = 0):
        from imprinting import heads

        # the whitened head, as methods.whitened maps and fits it (shrinkage and {n: correction}
        # chosen by heads.choose on simulated base episodes), its covariance from the base only
        self.fmap = heads.FeatureMap(0.5, heads.FeatureMap(0.5)(raw).mean(axis=0))
        x = self.fmap(raw)
        shrink, corr, _ = heads.choose(x, y, seed=seed)
        scatter, dof = heads.within_class_scatter(x, y)
        self.head = heads.WhitenedMeans(scatter / dof, shrink, corr)
        # Mahalanobis on L2-normalized features: shared within-class covariance of the base,
        # shrunk towards its mean eigenvalue by the shrinkage heads.choose picks on these features
        u = unit(raw)
        uc = u - u.mean(axis=0)
        self.maha_shrinkage, _, _ = heads.choose(uc, y, seed=seed, corrections=(0.0,))
        scatter, dof = heads.within_class_scatter(uc, y)
        self.precision = shrunk_precision(scatter / dof, self.maha_shrinkage)
        # the background Gaussian of relative Mahalanobis (Ren et al. 2021): all base photos as one class
        self.mu0 = u.mean(axis=0)
        self.precision0 = shrunk_precision(np.cov(u, rowvar=False), self.maha_shrinkage)
        self.info = {"whitened shrinkage": shrink, "whitened correction": corr,
                     "Mahalanobis shrinkage": self.maha_shrinkage, "base photos": len(y),
                     "base classes": len(np.unique(y))}


class Queries:
    """The fixed query photos of a data set (the same in every draw), with what every draw reuses."""

    def __init__(self, stats: BaseStats, raw: np.ndarray):
        self.u = unit(raw)
        self.up = self.u @ stats.precision
        self.upu = np.einsum("nd,nd->n", self.up, self.u)
        c = self.u - stats.mu0
        self.d0 = np.einsum("nd,nd->n", c @ stats.precision0, c)  # Mahalanobis to the background
        self.x = stats.fmap(raw)


def _whitened_loo(stats: BaseStats, x: np.ndarray, y: np.ndarray, means: np.ndarray, counts: np.ndarray):
    """The head's scores of the taught examples, each one's own class scored by the row its
    class would have without it (as ``calibration.head_scores`` does); rows with n = 1 unscored."""
    g = stats.head.scores(x, means, counts)
    n = counts[y].astype(np.float64)
    ok = n >= 2
    m1 = (means[y][ok] * n[ok, None] - x[ok]) / (n[ok, None] - 1)
    w = m1 @ stats.head.precision
    strength = stats.head.strength(n[ok] - 1)
    b = -0.5 * (np.einsum("nd,nd->n", w, m1) - strength * stats.head.excess / (n[ok] - 1))
    g[np.flatnonzero(ok), y[ok]] = np.einsum("nd,nd->n", x[ok], w) + b
    return g, ok


def score_all(stats: BaseStats, raw_tr: np.ndarray, y_tr: np.ndarray, classes: int, q: Queries):
    """{score name: ((Q,) known-ness, (Q,) predicted class)} for the queries ``q`` of a model
    taught the examples ``raw_tr`` (labels 0..classes-1), and the head's fitted temperature."""
    from imprinting.calibration import TEMPERATURE_BOUNDS, fit_scale
    from imprinting.heads import class_means

    out = {}
    u_tr = unit(raw_tr)
    sums = np.zeros((classes, u_tr.shape[1]))
    np.add.at(sums, y_tr, u_tr)
    cos = q.u @ unit(sums).T
    out["cosine"] = (cos.max(axis=1), cos.argmax(axis=1))
    # the whitened head: max score and energy at the temperature leave-one-out NLL fits
    x_tr = stats.fmap(raw_tr)
    means, counts = class_means(x_tr, y_tr, classes)
    g = stats.head.scores(q.x, means, counts)
    out["whitened max"] = (g.max(axis=1), g.argmax(axis=1))
    g_tr, ok = _whitened_loo(stats, x_tr, y_tr, means, counts)
    t = fit_scale(g_tr[ok], y_tr[ok], TEMPERATURE_BOUNDS) if ok.any() else 1.0
    out["whitened energy"] = (logsumexp(t * g, axis=1) / t, g.argmax(axis=1))
    # Mahalanobis with the predictive-variance shot correction: a class mean of n examples is
    # off by Sigma / n, so a new photo of the class ~ N(m, Sigma (n + 1) / n): d2 * n / (n + 1)
    umeans, ucounts = class_means(u_tr, y_tr, classes)
    mp = umeans @ stats.precision
    d2 = q.upu[:, None] - 2 * q.up @ umeans.T + np.einsum("cd,cd->c", mp, umeans)[None, :]
    d2 = d2 * (ucounts / (ucounts + 1.0))[None, :]
    out["Mahalanobis"] = (-d2.min(axis=1), d2.argmin(axis=1))
    out["rel. Mahalanobis"] = (-(d2.min(axis=1) - q.d0), d2.argmin(axis=1))
    raw_d2 = d2 / (ucounts / (ucounts + 1.0))[None, :]
    out["rel. Mahalanobis uncorrected"] = (-(raw_d2.min(axis=1) - q.d0), raw_d2.argmin(axis=1))
    # k-NN (Sun et al. 2022): cosine of the k-th nearest taught example; predicts the nearest one's class
    s = q.u @ u_tr.T
    k = min(5, s.shape[1])
    top = -np.sort(-np.partition(s, s.shape[1] - k, axis=1)[:, -k:], axis=1)
    nn = y_tr[s.argmax(axis=1)]
    out["kNN k=1"] = (top[:, 0], nn)
    out["kNN k=5"] = (top[:, k - 1], nn)
    return out, t


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown]))


def fpr_at_95(known: np.ndarray, unknown: np.ndarray) -> float:
    """The share of unknown photos accepted at the threshold that accepts 95 % of the known."""
    thr = np.sort(known)[int(np.floor(0.05 * len(known)))]
    return float(np.mean(unknown >= thr))


def aurc(score: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve of the known photos: accepted most-known first, the
    error rate of the accepted at every coverage k/N, averaged over k (lower is better)."""
    order = np.argsort(-score, kind="stable")
    wrong = 1.0 - np.asarray(correct, np.float64)[order]
    return float(np.mean(np.cumsum(wrong) / np.arange(1, len(wrong) + 1)))
