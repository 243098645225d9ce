"""The whitened head in the product (``WhitenedHead``): frozen shared statistics kept with a
class table, and ``fit_head``, the rule that fits it and chooses between it and the paper's."""

from __future__ import annotations

import numpy as np

from imprinting.heads.episodes import choose, novel_recall
from imprinting.heads.means import SHRINKAGES, WhitenedMeans, within_class_scatter
from imprinting.heads.rule import RuleState, TaughtSetRule, reference_sample
from imprinting.rows import normalize_rows


def _lookup(chosen: dict, counts: np.ndarray) -> np.ndarray:
    """``chosen[n]`` for each count (0 for counts not in it), vectorized."""
    keys = np.array(sorted(chosen), np.int64)
    values = np.array([chosen[k] for k in sorted(chosen)], np.float64)
    at = np.clip(np.searchsorted(keys, counts), 0, len(keys) - 1)
    return np.where(keys[at] == counts, values[at], 0.0)


class WhitenedHead:
    """``WhitenedMeans`` as a model's head: frozen shared statistics (the centre and the
    within-class covariance of the embeddings, the shrinkage, a temperature and how the shot
    correction is chosen) and what turns one class's running sum and count into its scoring row.
    ``imprinting.classes.ClassTable`` keeps one row per class (``table_rows``), recomputed for
    that class alone when it changes (O(D^2)), so adding, extending, removing, saving and
    reloading give what one batch computation gives. Scores of embeddings e (unit length,
    power-transformed by the embedder): ``temperature * ((e - centre) @ W.T + b)`` with
    ``b = b0 + strength(n) * lift``.

    The strength for classes of n examples comes from ``rule`` (``heads.rule.TaughtSetRule``:
    chosen for the classes the table holds, as the protocol chooses it per episode) or, for a
    head without one (files from before the rule), from the frozen ``correction`` by shot count.
    A class without examples (a trained base class, a random one) is its unit template, with
    no shot correction."""

    kind = "whitened-means"

    def __init__(self, centre, covariance, shrinkage: float, correction, temperature: float = 1.0,
                 source: str = "examples", rule: TaughtSetRule | None = None):
        self.centre = np.asarray(centre, np.float64).reshape(-1)
        cov = np.asarray(covariance, np.float64)
        d = self.centre.shape[0]
        if cov.shape != (d, d) or not (np.isfinite(cov).all() and np.isfinite(self.centre).all()):
            raise ValueError(f"the head needs a finite ({d},) centre and ({d}, {d}) covariance, got {cov.shape}")
        if not (0 <= float(shrinkage) <= 1) or not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"shrinkage must be in [0, 1] and temperature positive, got {shrinkage}, {temperature}")
        if rule is not None and rule.reference.shape[1] != d:
            raise ValueError(f"a {rule.reference.shape[1]}-d correction rule for a {d}-d head")
        correction = {int(k): float(v) for k, v in correction.items()} if isinstance(correction, dict) else float(correction)
        self._means = WhitenedMeans(cov, float(shrinkage), correction)
        self.temperature, self.source, self.rule = float(temperature), str(source), rule
        self._centre32 = self.centre.astype(np.float32)
        self.centre_p = self.centre @ self.precision
        if rule is not None:  # the reference rows centred, and whitened: what the rule scores with
            self.reference_x = rule.reference - self.centre
            self.reference_p = rule.reference @ self.precision

    covariance = property(lambda self: self._means.covariance)
    shrinkage = property(lambda self: self._means.shrinkage)
    correction = property(lambda self: self._means.correction)
    precision = property(lambda self: self._means.precision)
    excess = property(lambda self: self._means.excess)
    dim = property(lambda self: self.centre.shape[0])

    def table_rows(self, sums: np.ndarray, counts: np.ndarray, templates: np.ndarray) -> dict:
        """The per-class rows a class table keeps for classes with these sums, counts and
        templates: ``head_w`` (C, D) float32, ``head_b0`` (C,) the correction-free bias,
        ``head_lift`` (C,) the bias per unit of correction (``tr(P S) / 2n``; 0 for a class
        without examples) and, with a rule, ``head_ref`` (C, R) float32, the reference rows'
        correction-free scores."""
        counts = np.asarray(counts, np.int64).reshape(-1)
        taught = counts > 0
        n = np.maximum(counts, 1).astype(np.float64)
        means = np.where(taught[:, None], np.asarray(sums, np.float64) / n[:, None], np.asarray(templates, np.float64))
        m = means - self.centre
        w = m @ self.precision  # the precision is symmetric
        out = {"head_w": w.astype(np.float32), "head_b0": -0.5 * np.einsum("cd,cd->c", w, m),
               "head_lift": np.where(taught, 0.5 * self.excess / n, 0.0)}
        if self.rule is not None:
            out["head_ref"] = (w @ self.reference_x.T + out["head_b0"][:, None]).astype(np.float32)
        return out

    def strengths(self, counts: np.ndarray, state=None) -> np.ndarray:
        """The correction of each class of ``counts`` examples: the rule's choice for the table
        whose ``RuleState`` is ``state``, or the frozen correction by shot count."""
        counts = np.asarray(counts, np.int64).reshape(-1)
        if self.rule is None:
            return self._means.strength(np.maximum(counts, 1).astype(np.float64))
        if state is None:
            raise ValueError("a head with a correction rule chooses for a class table: pass the table's state")
        chosen = state.corrections(counts)
        return _lookup(chosen, counts) if chosen else np.zeros(len(counts))

    def choice_state(self, names, sums, counts, scores, lift) -> RuleState | None:
        """What a class table keeps to choose the correction for its classes (with a rule)."""
        return RuleState(self, names, sums, counts, scores, lift) if self.rule is not None else None

    def rows(self, sums: np.ndarray, counts: np.ndarray, templates: np.ndarray, state=None) -> tuple[np.ndarray, np.ndarray]:
        """(W (C, D) float32, b (C,) float32): the scoring rows of classes with these sums,
        counts and templates (with a rule: as chosen for the table of ``state``)."""
        r = self.table_rows(sums, counts, templates)
        return r["head_w"], (r["head_b0"] + self.strengths(counts, state) * r["head_lift"]).astype(np.float32)

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
                "correction": {str(k): v for k, v in corr.items()} if isinstance(corr, dict) else corr,
                **({"rule": self.rule.header()} if self.rule is not None else {})}

    def arrays(self) -> dict:
        return {"centre": self.centre, "covariance": self.covariance,
                **(self.rule.arrays() if self.rule is not None else {})}

    @classmethod
    def from_parts(cls, header: dict, arrays: dict) -> WhitenedHead:
        """The inverse of ``header``/``arrays`` (a ``ValueError`` names what is wrong)."""
        if not isinstance(header, dict) or header.get("kind") != cls.kind:
            raise ValueError(f"unknown head {header!r}")
        try:
            corr = header["correction"]
            corr = {int(k): float(v) for k, v in corr.items()} if isinstance(corr, dict) else float(corr)
            rule = TaughtSetRule.from_parts(header["rule"], arrays) if header.get("rule") is not None else None
            return cls(arrays["centre"], arrays["covariance"], float(header["shrinkage"]), corr,
                       float(header.get("temperature", 1.0)), str(header.get("source", "examples")), rule)
        except (KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise ValueError(f"damaged head ({exc})") from None

    def __repr__(self) -> str:
        return (f"WhitenedHead(dim={self.dim}, shrinkage={self.shrinkage}, "
                f"correction={'per taught set' if self.rule is not None else self.correction}, source={self.source})")


HEADS = ("auto", "whitened", "normalized-mean")  # the names of ``imprint create/train --head``


def fit_head(z: np.ndarray, y: np.ndarray, choice: str = "auto", source: str = "examples", seed: int = 0,
             episodes: int = 4, names=None) -> tuple[WhitenedHead | None, dict]:
    """The head for embeddings ``z`` (unit length, power-transformed) labelled ``y``: the
    base training data of ``imprint train``, or a model's taught examples (``imprint create
    --from-folder``). The shrinkage and the corrections are chosen by ``choose`` on simulated
    episodes of these classes (never test labels); with ``choice="auto"``, the paper's head
    (``None``: the normalized mean) is kept unless the whitened one scores better on the same
    episodes. Returns (head or None, what was measured). Too little data to simulate an
    episode (fewer than 3 classes, or no class with 2 examples) keeps the paper's head.

    With ``names`` (the class name of each label value: ``names[label]``), the head carries the
    rule that chooses the correction for the classes a model holds (``heads.rule``): the novel
    recall of the same episodes, and a sample of these rows as its reference. Without, the
    corrections ``choose`` picked stay frozen by shot count."""
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
    try:
        shrinkage, correction, scores = choose(x, y, shots, episodes, seed, SHRINKAGES + (1.0,), paper=z)
    except ValueError as exc:  # e.g. hundreds of classes of 1-10 examples: no episode has every class
        if choice == "whitened":
            raise
        return None, {"head": "normalized-mean", "reason": f"no head could be chosen: {exc}"}
    scatter, dof = within_class_scatter(x, y)
    rule = None
    if names is not None:
        picked = reference_sample(y, seed=seed)
        unit = normalize_rows(z[picked].astype(np.float32).astype(np.float64))  # as a class table sums them
        rule = TaughtSetRule(unit, [names[int(v)] for v in y[picked]], novel_recall(x, y, shrinkage, shots, episodes, seed))
    head = WhitenedHead(centre, scatter / max(dof, 1), shrinkage, correction, source=source, rule=rule)
    ours = float(np.mean([scores[(shrinkage, correction[n], n)] for n in shots]))
    paper = float(np.mean([scores[("paper", n)] for n in shots]))
    report = {"shots": list(shots), "whitened": round(ours, 4), "normalized-mean": round(paper, 4),
              "shrinkage": shrinkage, "correction": "per taught set" if rule is not None else correction}
    if choice == "auto" and paper > ours:
        return None, {**report, "head": "normalized-mean", "reason": "scored better on simulated episodes"}
    return head, {**report, "head": "whitened"}
