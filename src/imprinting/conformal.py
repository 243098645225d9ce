"""Error rates the user chooses and gets: conformal thresholds from leave-one-out scores (numpy).

Two questions are answered from the same calibration scores, one per taught example (each
example scored by the model with the example left out of its class: ``calibration``):

* **"Not one of my classes"** (the unknown flag): a photo is flagged when its best cosine is
  below a threshold. With ``false_reject=α``, the threshold is the k-th smallest of the n
  examples' best cosines, k = floor((n + 1) α). A photo of a taught class that is exchangeable
  with the examples then has a best cosine below it with probability at most k / (n + 1) <= α:
  at most α of the photos of taught classes are flagged (conformal p-values: Vovk et al. 2005;
  Bates et al., "Testing for outliers with conformal p-values", Ann. Statist. 2023). When
  k = 0 (n + 1 < 1 / α) no threshold can promise α: there is none, and nothing is flagged.
  The share of never-taught photos the threshold lets through (false accepts) cannot be
  guaranteed: it is *estimated* by scoring each example against the other classes only (its
  class left out entirely, as if never taught).
* **Prediction sets** (LAC, least ambiguous set-valued classifiers: Sadinle, Lei and Wasserman,
  JASA 2019): each example's nonconformity is 1 - p(its class), with p the model's softmax
  probabilities. For coverage 1 - α, q is the k-th smallest of the n nonconformities,
  k = ceil((n + 1)(1 - α)); a photo's set is every class c with 1 - p(c) <= q. Then a photo of a
  taught class has its class in the set with probability at least 1 - α (marginal coverage).
  When k > n the set must hold every class (q = inf). An empty set means "not one of my classes".

The scores are kept sorted with the model (checkpoint, ``classes.npz``, the service's store),
so any rate can be asked for at prediction time without the examples. They hold for the classes
they were computed with (``classes``): after a class is added or removed, ``stale_for`` says so
and the model should be calibrated again (the examples of the other classes are not kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from imprinting.errors import UserError

# JSON keys of the scores in a checkpoint header, a classes file's header and the service's store
FIELDS = ("known", "others", "nonconformity")


class ConformalError(UserError):
    """Prediction sets asked of a model without calibration scores, or a rate out of (0, 1)."""


@dataclass(frozen=True)
class ConformalScores:
    """Sorted calibration scores of n taught examples (float64, ascending):

    * ``known``: each example's best cosine, its own class without it;
    * ``others``: each example's best cosine over the other classes (its class never taught);
    * ``nonconformity``: 1 - the probability of its own class (LAC), its class without it.
    """

    known: np.ndarray
    others: np.ndarray
    nonconformity: np.ndarray
    classes: tuple = ()  # the class names the scores were computed with (empty: not recorded)

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        for name in FIELDS:
            a = np.sort(np.asarray(getattr(self, name), np.float64).ravel())
            if not np.isfinite(a).all():
                raise ValueError(f"conformal scores: {name} has NaN or infinite values")
            object.__setattr__(self, name, a)
        if len(self.known) != len(self.nonconformity):
            raise ValueError("conformal scores: known and nonconformity must have one score per example")

    @property
    def n(self) -> int:
        return len(self.known)

    def stale_for(self, class_names) -> bool:
        """Whether the classes changed since the scores were computed (the guarantees were for
        those classes; calibrate again). Scores that did not record their classes never are.
        The answer for the last ``class_names`` object is kept: the service asks on every
        prediction with the class table's ``names`` tuple, which is the same object until a
        class changes, so 100,000 names are compared once per change, not once per request."""
        if not self.classes:
            return False
        last = getattr(self, "_last", None)
        if last is not None and last[0] is class_names:
            return last[1]
        stale = len(class_names) != len(self.classes) or set(class_names) != set(self.classes)  # order is no change
        object.__setattr__(self, "_last", (class_names, stale))
        return stale

    # -- the unknown flag -----------------------------------------------------------
    def unknown_threshold(self, false_reject: float) -> float | None:
        """The best-cosine threshold that flags at most ``false_reject`` of the photos of taught
        classes (module docstring); None when the n examples are too few for that rate."""
        _check_rate(false_reject, "false_reject")
        k = math.floor((self.n + 1) * false_reject)
        return None if k < 1 else float(self.known[k - 1])

    def false_reject_at(self, threshold: float | None) -> float:
        """The share of the examples flagged at ``threshold`` (best cosine below it)."""
        return 0.0 if threshold is None or self.n == 0 else float(np.mean(self.known < threshold))

    def false_accept_at(self, threshold: float | None) -> float | None:
        """The estimated share of never-taught photos accepted at ``threshold`` (None: no
        estimate, fewer than two classes)."""
        if len(self.others) == 0:
            return None
        return 1.0 if threshold is None else float(np.mean(self.others >= threshold))

    @staticmethod
    def min_examples(false_reject: float) -> int:
        """The fewest examples for which ``unknown_threshold(false_reject)`` exists."""
        return max(1, math.ceil(1 / false_reject) - 1)

    # -- prediction sets ------------------------------------------------------------
    def set_threshold(self, coverage: float) -> float:
        """q for sets holding a photo's class with probability >= ``coverage`` (module
        docstring); ``inf`` when the n examples are too few: every class is in every set."""
        _check_rate(coverage, "coverage")
        k = math.ceil((self.n + 1) * coverage)
        return math.inf if k > self.n else float(self.nonconformity[k - 1])

    # -- storage --------------------------------------------------------------------
    def to_json(self) -> dict:
        return {**{name: getattr(self, name).tolist() for name in FIELDS}, "classes": list(self.classes)}

    @classmethod
    def from_json(cls, data) -> ConformalScores:
        """From ``to_json``'s dict; ``ValueError`` naming what is wrong with a damaged one."""
        if not isinstance(data, dict) or not set(FIELDS) <= set(data) <= {*FIELDS, "classes"}:
            raise ValueError(f"conformal scores: expected an object with {', '.join(FIELDS)} (and classes)")
        classes = data.get("classes", [])
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError("conformal scores: classes is not a list of names")
        try:
            return cls(**{name: np.asarray(data[name], np.float64) for name in FIELDS}, classes=tuple(classes))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"conformal scores: {exc}") from None


def prediction_set(probabilities: np.ndarray, q: float) -> np.ndarray:
    """The class indices whose nonconformity 1 - p is at most ``q``, most probable first."""
    p = np.asarray(probabilities, np.float64)
    inside = np.flatnonzero(1.0 - p <= q)
    return inside[np.argsort(-p[inside], kind="stable")]


def scores_from(cosines: np.ndarray, others_best: np.ndarray, probabilities: np.ndarray,
                labels: np.ndarray, classes=()) -> ConformalScores:
    """``ConformalScores`` of calibration examples from their leave-one-out ``cosines`` (N, C),
    their best cosine over the other classes (N,), and their leave-one-out class
    ``probabilities`` (N, C), for the examples' class indices ``labels``."""
    labels = np.asarray(labels, np.int64)
    rows = np.arange(len(labels))
    return ConformalScores(known=np.asarray(cosines, np.float64).max(axis=1),
                           others=np.asarray(others_best, np.float64),
                           nonconformity=1.0 - np.asarray(probabilities, np.float64)[rows, labels], classes=classes)


def set_q(scores: ConformalScores | None, coverage: float | None) -> float | None:
    """The set threshold a prediction at ``coverage`` uses (None: no sets asked for); a
    ``ConformalError`` when the model has no calibration scores to make sets from."""
    if coverage is None:
        return None
    if scores is None:
        raise ConformalError("this model has no calibration scores for prediction sets: calibrate it first "
                             "(imprint create --from-folder, imprint calibrate, or POST /calibrate)")
    try:
        return scores.set_threshold(coverage)
    except ValueError as exc:
        raise ConformalError(str(exc)) from None


def _check_rate(rate: float, name: str) -> None:
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0 < rate < 1):
        raise ValueError(f"{name} must be a number between 0 and 1 (exclusive), got {rate!r}")
