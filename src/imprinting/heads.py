"""Closed-form heads over class means (numpy only): no gradient step, one pass over the data.

A class mean is the sufficient statistic of a Gaussian class model; what the paper's head (the
normalized mean, ``s * cos``) throws away is the shared shape of the classes. ``WhitenedMeans``
keeps it: a within-class covariance S shared by all classes (from the base classes' training
features), shrunk towards its mean eigenvalue, whitens the class means (a linear discriminant,
as in LDA and FeCAM), and each class's bias is corrected for its own shot count: the mean of
n samples is too long, in the whitened norm, by tr(P S) / n on average (P the inverse of the
shrunk S), which would hand a class taught from one picture every query; ``correction`` says
how much of that excess is taken back.

Scores: ``g_c(x) = m_c' P x - (m_c' P m_c - correction * tr(P S) / n_c) / 2`` on features
mapped by ``FeatureMap`` (power transform, L2 normalization, centring on the base mean).

``choose`` picks the shrinkage, and the correction for each shot count, by simulated low-shot
episodes on the base classes alone (half of them play the novel classes, held-out base images the queries), so the
choice never sees test labels and a user's model makes it on the user's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHRINKAGES = (0.5, 0.7, 0.8, 0.9, 0.95)
CORRECTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class FeatureMap:
    """x -> normalize(max(x, 0) ** power) - centre (``power=None``: no power transform)."""

    power: float | None = 0.5
    centre: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.power:
            x = np.maximum(x, 0) ** self.power
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x - self.centre if self.centre is not None else x


def within_class_scatter(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
    """(sum over classes of the scatter of x around its class mean, degrees of freedom)."""
    d = x.shape[1]
    scatter = np.zeros((d, d))
    classes = np.unique(y)
    for c in classes:
        z = x[y == c]
        z = z - z.mean(axis=0)
        scatter += z.T @ z
    return scatter, len(x) - len(classes)


@dataclass
class WhitenedMeans:
    """The head: a shared covariance, its shrinkage and the shot correction (see the module)."""

    covariance: np.ndarray  # (D, D) within-class covariance of the mapped features
    shrinkage: float = 0.8
    correction: float | dict = 0.75  # one strength, or {n: strength} by shot count
    precision: np.ndarray = field(init=False, repr=False)
    excess: float = field(init=False)  # tr(P S): the whitened excess length of a one-shot mean

    def __post_init__(self) -> None:
        s = np.asarray(self.covariance, np.float64)
        d = s.shape[0]
        shrunk = (1 - self.shrinkage) * s + self.shrinkage * (np.trace(s) / d) * np.eye(d)
        self.precision = np.linalg.inv(shrunk)
        self.excess = float(np.einsum("ij,ji->", self.precision, s))

    def weights(self, means: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) with scores = x @ W.T + b, for class means (C, D) of ``counts`` examples."""
        w = means @ self.precision
        n = np.maximum(np.asarray(counts, np.float64), 1)
        b = -0.5 * (np.einsum("cd,cd->c", w, means) - self.strength(n) * self.excess / n)
        return w, b

    def strength(self, n: np.ndarray) -> np.ndarray:
        """The correction for classes of ``n`` examples: with one strength per shot count,
        that of the largest simulated count not above n (the smallest for fewer)."""
        if not isinstance(self.correction, dict):
            return np.full(len(n), float(self.correction))
        known = np.array(sorted(self.correction), np.float64)
        values = np.array([self.correction[k] for k in sorted(self.correction)], np.float64)
        return values[np.maximum(np.searchsorted(known, n, side="right") - 1, 0)]

    def scores(self, x: np.ndarray, means: np.ndarray, counts: np.ndarray) -> np.ndarray:
        w, b = self.weights(means, counts)
        return x @ w.T + b


def class_means(x: np.ndarray, y: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(means (C, D), counts (C,)) of the rows of x by label (a class without rows: zeros)."""
    sums = np.zeros((classes, x.shape[1]))
    np.add.at(sums, y, x)
    counts = np.bincount(y, minlength=classes)
    return sums / np.maximum(counts, 1)[:, None], counts


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


# -- the head in the product: kept with a class table --------------------------------------------
class WhitenedHead:
    """``WhitenedMeans`` as a model's head: frozen shared statistics (the centre and the
    within-class covariance of the embeddings, the shrinkage, the correction by shot count and
    a temperature) and the rule that turns one class's running sum and count into its scoring
    row. ``imprinting.classes.ClassTable`` keeps one row per class (``rows``), recomputed for
    that class alone when it changes (O(D^2)), so adding, extending, removing, saving and
    reloading give what one batch computation gives. Scores of embeddings e (unit length,
    power-transformed by the embedder): ``temperature * ((e - centre) @ W.T + b)``.

    A class without examples (a trained base class, a random one) is its unit template,
    with no shot correction."""

    kind = "whitened-means"

    def __init__(self, centre, covariance, shrinkage: float, correction, temperature: float = 1.0,
                 source: str = "examples"):
        self.centre = np.asarray(centre, np.float64).reshape(-1)
        cov = np.asarray(covariance, np.float64)
        d = self.centre.shape[0]
        if cov.shape != (d, d) or not (np.isfinite(cov).all() and np.isfinite(self.centre).all()):
            raise ValueError(f"the head needs a finite ({d},) centre and ({d}, {d}) covariance, got {cov.shape}")
        if not (0 <= float(shrinkage) <= 1) or not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"shrinkage must be in [0, 1] and temperature positive, got {shrinkage}, {temperature}")
        correction = {int(k): float(v) for k, v in correction.items()} if isinstance(correction, dict) else float(correction)
        self._means = WhitenedMeans(cov, float(shrinkage), correction)
        self.temperature, self.source = float(temperature), str(source)
        self._centre32 = self.centre.astype(np.float32)

    covariance = property(lambda self: self._means.covariance)
    shrinkage = property(lambda self: self._means.shrinkage)
    correction = property(lambda self: self._means.correction)
    dim = property(lambda self: self.centre.shape[0])

    def rows(self, sums: np.ndarray, counts: np.ndarray, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W (C, D) float32, b (C,) float32): the scoring rows of classes with these sums,
        counts and templates."""
        counts = np.asarray(counts, np.int64).reshape(-1)
        taught = counts > 0
        n = np.maximum(counts, 1).astype(np.float64)
        means = np.where(taught[:, None], np.asarray(sums, np.float64) / n[:, None], np.asarray(templates, np.float64))
        m = means - self.centre
        w = m @ self._means.precision  # the precision is symmetric
        excess = np.where(taught, self._means.strength(n) * self._means.excess / n, 0.0)
        b = -0.5 * (np.einsum("cd,cd->c", w, m) - excess)
        return w.astype(np.float32), b.astype(np.float32)

    def scores(self, embeddings: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(e - centre) @ W.T + b`` in float32: the scores at temperature 1."""
        return (np.asarray(embeddings, np.float32) - self._centre32) @ w.T + b

    def logits(self, embeddings: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = self.scores(embeddings, w, b)
        return out * np.float32(self.temperature) if self.temperature != 1.0 else out

    def header(self) -> dict:
        """The JSON part of the head (the arrays are ``arrays``)."""
        corr = self.correction
        return {"kind": self.kind, "shrinkage": self.shrinkage, "temperature": self.temperature,
                "source": self.source,
                "correction": {str(k): v for k, v in corr.items()} if isinstance(corr, dict) else corr}

    def arrays(self) -> dict:
        return {"centre": self.centre, "covariance": self.covariance}

    @classmethod
    def from_parts(cls, header: dict, arrays: dict) -> "WhitenedHead":
        """The inverse of ``header``/``arrays`` (a ``ValueError`` names what is wrong)."""
        if not isinstance(header, dict) or header.get("kind") != cls.kind:
            raise ValueError(f"unknown head {header!r}")
        try:
            corr = header["correction"]
            corr = {int(k): float(v) for k, v in corr.items()} if isinstance(corr, dict) else float(corr)
            return cls(arrays["centre"], arrays["covariance"], float(header["shrinkage"]), corr,
                       float(header.get("temperature", 1.0)), str(header.get("source", "examples")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"damaged head ({exc})") from None

    def __repr__(self) -> str:
        return f"WhitenedHead(dim={self.dim}, shrinkage={self.shrinkage}, correction={self.correction}, source={self.source})"


HEADS = ("auto", "whitened", "normalized-mean")  # the names of ``imprint create/train --head``


def fit_head(z: np.ndarray, y: np.ndarray, choice: str = "auto", source: str = "examples", seed: int = 0,
             episodes: int = 4) -> tuple[WhitenedHead | None, dict]:
    """The head for embeddings ``z`` (unit length, power-transformed) labelled ``y``: the
    base training data of ``imprint train``, or a model's taught examples (``imprint create
    --from-folder``). The shrinkage and the corrections are chosen by ``choose`` on simulated
    episodes of these classes (never test labels); with ``choice="auto"``, the paper's head
    (``None``: the normalized mean) is kept unless the whitened one scores better on the same
    episodes. Returns (head or None, what was measured). Too little data to simulate an
    episode (fewer than 3 classes, or no class with 2 examples) keeps the paper's head."""
    if choice not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {choice!r}")
    if choice == "normalized-mean":
        return None, {"head": "normalized-mean", "reason": "asked for"}
    z, y = np.asarray(z, np.float64), np.asarray(y)
    labels, counts = np.unique(y, return_counts=True)
    median = int(np.median(counts)) if len(counts) else 0
    shots = tuple(n for n in (1, 2, 5, 10) if n < median) or ((1,) if median >= 2 else ())
    if len(labels) < 3 or not shots:
        if choice == "whitened":
            raise ValueError("the whitened head needs at least 3 classes, most with 2 or more examples")
        return None, {"head": "normalized-mean", "reason": "too few classes or examples to choose a head"}
    centre = z.mean(axis=0)
    x = z - centre
    shrinkage, correction, scores = choose(x, y, shots, episodes, seed, SHRINKAGES + (1.0,), paper=z)
    scatter, dof = within_class_scatter(x, y)
    head = WhitenedHead(centre, scatter / max(dof, 1), shrinkage, correction, source=source)
    ours = float(np.mean([scores[(shrinkage, correction[n], n)] for n in shots]))
    paper = float(np.mean([scores[("paper", n)] for n in shots]))
    report = {"shots": list(shots), "whitened": round(ours, 4), "normalized-mean": round(paper, 4),
              "shrinkage": shrinkage, "correction": correction}
    if choice == "auto" and paper > ours:
        return None, {**report, "head": "normalized-mean", "reason": "scored better on simulated episodes"}
    return head, {**report, "head": "whitened"}
