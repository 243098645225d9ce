"""Simulated low-shot episodes on labelled base (or taught) embeddings, and the rules that
choose the shrinkage and the shot correction from them: never from test labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imprinting.heads.means import (
    CORRECTIONS,
    SHRINKAGES,
    WhitenedMeans,
    class_means,
    within_class_scatter,
)


@dataclass
class SimulatedEpisode:
    """One shot count of one simulated episode (``simulated_episodes``): labels remapped so
    that the ``num_base`` fake base classes come first; boolean masks over the rows."""

    episode: int
    n: int
    labels: np.ndarray
    num_base: int
    fit_base: np.ndarray  # fake-base rows their covariance and means come from
    support: np.ndarray  # fit_base and n rows of each fake-novel class
    query: np.ndarray  # held-out fake-base rows and the other fake-novel rows
    means: np.ndarray
    counts: np.ndarray


def simulated_episodes(x: np.ndarray, y: np.ndarray, shots=(1, 2, 5, 10), episodes: int = 2, seed: int = 0,
                       novel_share: float = 0.4, held_out: float = 0.3):
    """``choose``'s episodes, each shot count of each in turn: a share ``1 - novel_share`` of
    the classes play the base classes (their means from ``1 - held_out`` of their rows, the
    rest queries), the others the novel ones (``n`` rows each as examples, the rest queries)."""
    rng = np.random.default_rng(seed)
    labels = np.unique(y)
    for e in range(episodes):
        perm = rng.permutation(labels)
        cut = len(perm) - max(1, int(round(novel_share * len(perm))))
        remap = {int(c): i for i, c in enumerate(perm)}
        yy = np.array([remap[int(v)] for v in y])
        is_base = yy < cut
        fit_base = is_base & ~(rng.random(len(y)) < held_out)
        for n in shots:
            support, query = fit_base.copy(), is_base & ~fit_base
            for c in range(cut, len(labels)):
                idx = rng.permutation(np.flatnonzero(yy == c))
                support[idx[:n]] = True
                query[idx[n:]] = True
            means, counts = class_means(x[support], yy[support], len(labels))
            yield SimulatedEpisode(e, n, yy, cut, fit_base, support, query, means, counts)


def scored_episodes(x: np.ndarray, y: np.ndarray, shrinkages, shots=(1, 2, 5, 10), episodes: int = 2,
                    seed: int = 0, novel_share: float = 0.4, held_out: float = 0.3):
    """``simulated_episodes`` that can be scored (queries of both kinds, every class with an
    example), each as (episode, {shrinkage: its head, correction 0, from the episode's fake
    base rows}, the queries' labels, which of them are novel): what ``choose`` and
    ``novel_recall`` score."""
    heads, current = {}, None
    for ep in simulated_episodes(x, y, shots, episodes, seed, novel_share, held_out):
        if ep.episode != current:  # a new episode: its base classes' covariance
            current = ep.episode
            scatter, dof = within_class_scatter(x[ep.fit_base], ep.labels[ep.fit_base])
            heads = {a: WhitenedMeans(scatter / max(dof, 1), a, 0.0) for a in shrinkages}
        truth = ep.labels[ep.query]
        novel = truth >= ep.num_base
        if novel.any() and not novel.all() and not (ep.counts == 0).any():
            yield ep, heads, truth, novel


def choose(x: np.ndarray, y: np.ndarray, shots=(1, 2, 5, 10), episodes: int = 2, seed: int = 0,
           shrinkages=SHRINKAGES, corrections=CORRECTIONS, novel_share: float = 0.4,
           held_out: float = 0.3, paper: np.ndarray | None = None) -> tuple[float, dict, dict]:
    """(shrinkage, {n: correction}, the score of every (shrinkage, correction, n)) by simulated
    episodes on labelled
    (mapped) base features ``x``, ``y``: a share ``1 - novel_share`` of the classes play the
    base classes (their covariance and means from ``1 - held_out`` of their images, the rest
    queries), the others the novel ones (``n`` images each as examples, the rest queries). The
    score of a choice is the mean of the novel and the base queries' top-1 (both among all
    classes) over episodes: base and novel classes weigh the same. The correction is picked per
    shot count, the shrinkage for the best mean over shot counts. With ``paper`` (the
    uncentred unit-length features of the same rows), the paper's head (cosine with the
    normalized class sums) is scored on the same episodes too, as ``score[("paper", n)]``.
    A part of an episode with no query (a class with too few examples) is not scored. (Weighing the
    novel queries more, as an all-class top-1 over these episodes would, picks the full
    correction, which on CUB's real test split gives the novel classes too many base images.)"""
    score = {(a, c, n): [] for a in shrinkages for c in corrections for n in shots}
    if paper is not None:
        score.update({("paper", n): [] for n in shots})
    for ep, heads, truth, novel in scored_episodes(x, y, shrinkages, shots, episodes, seed, novel_share, held_out):
        for a, head in heads.items():
            for c in corrections:
                head.correction = c
                right = head.scores(x[ep.query], ep.means, ep.counts).argmax(axis=1) == truth
                score[(a, c, ep.n)].append(0.5 * (right[novel].mean() + right[~novel].mean()))
        if paper is not None:
            sums, _ = class_means(paper[ep.support], ep.labels[ep.support], len(ep.counts))
            t = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            right = (paper[ep.query] @ t.T).argmax(axis=1) == truth
            score[("paper", ep.n)].append(0.5 * (right[novel].mean() + right[~novel].mean()))
    if not any(score.values()):
        raise ValueError("no simulated episode could be scored: too few classes or examples")
    mean = {k: float(np.mean(v)) if v else float("-inf") for k, v in score.items()}

    def best_correction(a, n):
        return max(corrections, key=lambda c: (mean[(a, c, n)], -c))

    def value(a):  # the shrinkage's score with the best correction at each shot count
        return np.mean([mean[(a, best_correction(a, n), n)] for n in shots])

    shrinkage = max(shrinkages, key=lambda a: (value(a), -a))
    return shrinkage, {int(n): best_correction(shrinkage, n) for n in shots}, mean


EPISODE_CORRECTIONS = tuple(round(0.25 + 0.05 * i, 2) for i in range(16))  # 0.25, 0.3, ..., 1.0


def novel_recall(x: np.ndarray, y: np.ndarray, shrinkage: float, shots=(1, 2, 5, 10), episodes: int = 2,
                 seed: int = 0, corrections=EPISODE_CORRECTIONS) -> dict:
    """{(correction, n): top-1 of the fake novel classes' queries among all classes} on the
    simulated episodes ``choose`` scores (``scored_episodes``), at ``shrinkage``."""
    out = {(c, n): [] for c in corrections for n in shots}
    for ep, heads, truth, novel in scored_episodes(x, y, (shrinkage,), shots, episodes, seed):
        head = heads[shrinkage]
        base_scores = head.scores(x[ep.query][novel], ep.means, ep.counts)  # correction 0
        lift = 0.5 * head.excess / np.maximum(ep.counts, 1)  # a correction c adds c * lift per class
        for c in corrections:
            out[(c, ep.n)].append(float(((base_scores + c * lift).argmax(1) == truth[novel]).mean()))
    return {k: float(np.mean(v)) for k, v in out.items() if v}


def base_recall(head: WhitenedMeans, x: np.ndarray, y: np.ndarray, means: np.ndarray, counts: np.ndarray,
                corrections=EPISODE_CORRECTIONS) -> dict:
    """{correction: top-1 among all classes of the base training rows ``x`` (labels ``y``, the
    first classes of ``means``, which include these rows)}, each row scored against its own
    class's mean without it (leave one out): how many base images the other classes, the
    newly taught ones included, would take at each correction. Rows of classes with one row
    are not scored (every value 0 when no class has two: the choice then follows novel recall)."""
    n = np.maximum(np.asarray(counts, np.float64), 1)
    w, b = head.weights(means, np.asarray(counts))
    strength = head.strength(n)
    plain = x @ w.T + b - 0.5 * strength * head.excess / n  # scores with no correction
    own_n = n[y] - 1
    keep = own_n >= 1
    loo = (means[y] * n[y][:, None] - x) / np.maximum(own_n, 1)[:, None]
    w_loo = loo @ head.precision
    own = np.einsum("nd,nd->n", w_loo, x) - 0.5 * np.einsum("nd,nd->n", w_loo, loo)
    plain[np.arange(len(y)), y] = -np.inf
    lift, own_lift = 0.5 * head.excess / n, 0.5 * head.excess / np.maximum(own_n, 1)
    if not keep.any():  # no base class has two rows: nothing to leave one out of
        return {c: 0.0 for c in corrections}
    return {c: float(((plain + c * lift).max(1) < own + c * own_lift)[keep].mean()) for c in corrections}


def episode_correction(recall: dict, base: dict, n: int) -> float:
    """The correction for classes of ``n`` examples that maximizes the mean of novel recall
    (``novel_recall``, at the largest simulated count not above n) and base recall
    (``base_recall``, on the model's own base rows and taught classes); ties: the smaller."""
    if not recall or not base:
        raise ValueError("no simulated episode or base row could be scored: too few classes or examples")
    counts = sorted({k for _, k in recall})
    at = max([k for k in counts if k <= n], default=counts[0])
    return max(base, key=lambda c: (recall[(c, at)] + base[c], -c))

