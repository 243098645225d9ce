"""The shot correction chosen for the classes a model holds now: the protocol's per-episode rule
(``heads.episode_correction``) shipped with a model's head.

How many base images one-shot classes take grows with how many of them a model holds, which
simulated episodes on base data alone cannot show (docs/heads.md). So the correction for classes
of n examples maximizes the mean of two recalls. The novel recall that simulated episodes show at
each correction and shot count (``heads.novel_recall``) is measured once, when the head is fitted,
and kept as a table. The base recall is measured on the model's own labelled rows against the
classes the model holds now (``heads.base_recall``, leave one out).

``TaughtSetRule`` is what ships with the head: that table, and a sample of the rows the head was
fitted on (at most ``MAX_REFERENCE``, of classes with two or more rows), each named by its class.
``RuleState`` is what one class table keeps to choose again when its classes change. A reference
row counts while its class, by name, is in the table with two or more examples. It is scored
against that class's mean without itself, and against every other class the table holds, each at
the correction under test (a class without examples, a trained template, has no correction).
Adding a class costs O(R D) for R reference rows; changing or removing one costs O(R C) plus
O(D^2) for each class the reference rows belong to.

The leave-one-out assumes a reference row is still in its class's sum. That holds while the class
keeps the examples it was fitted with (it may gain more); a class removed and taught again under
the same name from other pictures makes its reference rows score against a wrong mean.
"""

from __future__ import annotations

import numpy as np

from imprinting.heads.episodes import EPISODE_CORRECTIONS, episode_correction

MAX_REFERENCE = 512


def reference_sample(y: np.ndarray, limit: int = MAX_REFERENCE, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` rows of classes with two or more rows: the classes in turn
    (in a seeded random order), one random row of each at a time, so every class gets its share."""
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(y, return_counts=True)
    pools = [list(rng.permutation(np.flatnonzero(y == c))) for c in rng.permutation(labels[counts >= 2])]
    picked: list[int] = []
    while len(picked) < limit and any(pools):
        for pool in pools:
            if pool and len(picked) < limit:
                picked.append(int(pool.pop()))
    return np.sort(np.array(picked, np.int64))


class TaughtSetRule:
    """The frozen part of the rule: reference rows (R, D) (the unit-length embeddings the class
    sums are made of), their class names, and the novel recall ``{(correction, n): top-1}``."""

    def __init__(self, reference, labels, recall: dict, corrections=EPISODE_CORRECTIONS):
        self.reference = np.asarray(reference, np.float64)
        self.labels = [str(label) for label in labels]
        self.corrections = tuple(float(c) for c in corrections)
        self.recall = {(float(c), int(n)): float(v) for (c, n), v in recall.items()}
        self.shots = sorted({n for _, n in self.recall})
        if self.reference.ndim != 2 or len(self.labels) != len(self.reference) or not np.isfinite(self.reference).all():
            raise ValueError(f"the rule needs finite (R, D) reference rows and R names, got {self.reference.shape} "
                             f"and {len(self.labels)}")
        missing = [(c, n) for c in self.corrections for n in self.shots if (c, n) not in self.recall]
        if not self.shots or missing or not self.corrections:
            raise ValueError(f"the rule's novel recall misses corrections and shot counts {missing[:3]}")
        values = np.array(list(self.corrections) + list(self.recall.values()), np.float64)
        if not np.isfinite(values).all() or len(set(self.corrections)) != len(self.corrections) or min(self.shots) < 1:
            raise ValueError("the rule's corrections must be distinct finite numbers, its recall finite, its shot counts >= 1")
        self.label_set = frozenset(self.labels)

    def choose(self, base: dict, n: int) -> float:
        """The correction for classes of ``n`` examples given the base recall ``{c: top-1}``."""
        return episode_correction(self.recall, base, n)

    def header(self) -> dict:
        return {"labels": self.labels, "corrections": list(self.corrections),
                "recall": {str(n): [self.recall[(c, n)] for c in self.corrections] for n in self.shots}}

    def arrays(self) -> dict:
        return {"reference": self.reference}

    @classmethod
    def from_parts(cls, header: dict, arrays: dict) -> TaughtSetRule:
        corrections = [float(c) for c in header["corrections"]]
        recall = {}
        for n, values in header["recall"].items():
            if len(values) != len(corrections):
                raise ValueError(f"the rule's novel recall at n = {n} has {len(values)} values for "
                                 f"{len(corrections)} corrections")
            recall.update({(c, int(n)): float(v) for c, v in zip(corrections, values)})
        return cls(arrays["reference"], header["labels"], recall, corrections)


class RuleState:
    """One class table's scores of the rule's reference rows: for each correction c of the grid,
    each row's best score among the classes other than its own (``others``, (G, R)), and its
    score against its own class's mean without it (``own`` + c * ``own_lift``, rows with
    ``keep``). ``scores`` (C, R) are the table's correction-free scores of the reference rows
    (its ``head_ref`` rows), ``lift`` (C,) each class's score gain per unit of correction."""

    def __init__(self, head, names, sums: np.ndarray, counts: np.ndarray, scores: np.ndarray, lift: np.ndarray):
        rule = head.rule
        self.rule, self.grid = rule, np.array(rule.corrections)
        index = {name: i for i, name in enumerate(names)}
        own = np.array([index.get(label, -1) for label in rule.labels], np.int64)
        n_own = np.where(own >= 0, np.asarray(counts)[np.maximum(own, 0)], 0) if len(names) else np.zeros(len(own))
        self.keep = n_own >= 2
        self.own, self.own_lift = np.zeros(len(own)), np.zeros(len(own))
        if self.keep.any():
            k, m = own[self.keep], (n_own[self.keep] - 1).astype(np.float64)
            classes, inverse = np.unique(k, return_inverse=True)
            sum_p = np.asarray(sums, np.float64)[classes] @ head.precision  # (U, D): O(D^2) a class
            w = (sum_p[inverse] - head.reference_p[self.keep]) / m[:, None] - head.centre_p
            mean = (np.asarray(sums, np.float64)[k] - rule.reference[self.keep]) / m[:, None] - head.centre
            x = head.reference_x[self.keep]
            self.own[self.keep] = np.einsum("rd,rd->r", x, w) - 0.5 * np.einsum("rd,rd->r", w, mean)
            self.own_lift[self.keep] = 0.5 * head.excess / m
        plain = np.asarray(scores, np.float64).copy()
        rows = np.flatnonzero(own >= 0)
        plain[own[rows], rows] = -np.inf  # a row's own class is not one of the others
        lift = np.asarray(lift, np.float64)
        self.others = np.full((len(self.grid), len(own)), -np.inf)
        for g, c in enumerate(self.grid):
            if len(plain):
                self.others[g] = (plain + c * lift[:, None]).max(axis=0)

    def add(self, name: str, scores: np.ndarray, lift: float) -> bool:
        """A class ``name`` was added with these reference scores; False when the state must be
        rebuilt instead (a reference row's own class came back)."""
        if name in self.rule.label_set:
            return False
        s = np.asarray(scores, np.float64)
        np.maximum(self.others, s[None, :] + self.grid[:, None] * float(lift), out=self.others)
        return True

    def base_recall(self) -> dict:
        """``{c: top-1 of the kept reference rows among every class}`` (all 0 with none kept)."""
        if not self.keep.any():
            return {float(c): 0.0 for c in self.grid}
        own = self.own[self.keep][None, :] + self.grid[:, None] * self.own_lift[self.keep][None, :]
        right = (self.others[:, self.keep] < own).mean(axis=1)
        return {float(c): float(r) for c, r in zip(self.grid, right)}

    def corrections(self, counts: np.ndarray) -> dict:
        """``{n: correction}`` for every shot count of the table's taught classes."""
        shots = np.unique(np.asarray(counts)[np.asarray(counts) > 0])
        if not len(shots):
            return {}
        base = self.base_recall()
        return {int(n): self.rule.choose(base, int(n)) for n in shots}
