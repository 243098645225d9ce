"""Taught examples that look taught to the wrong class (numpy only, no torch).

A photo put in the wrong class folder before ``imprint create --from-folder`` is caught by the
same leave-one-out scores the calibration fits on (``imprinting.calibration``): each taught
example scored against its own class with the example left out, and against every other
class as it is. A photo of class A filed under B does not look like B's other photos, so its
leave-one-out probability of B is near zero and another class takes the rest.

The rule (``find_suspects``): an example is a suspect when the leave-one-out probability of
its own class is below ``max_own_probability`` (0.1: at least 90 % sure it is not what it was
taught as) and another class is the most probable one; ``looks_like`` is that class and
``probability`` its probability. Examples of a class taught from a single example have no
leave-one-out score and are never suspects.

Why this rule, measured: the README's first five minutes (Flowers-102 classes 1, 4, 11, 23,
47, 50, 54, 65, 74, 77, the first 5 training photos each, EfficientNet-Lite0 at ``imprint
create``'s defaults: power-transformed embeddings, head auto = whitened-means, its temperature
fitted by leave-one-out), 3 photos moved into a wrong class folder (numpy seed s: 3 distinct
photos, each to a uniformly drawn other class), seeds 0-19. found: moved photos named, of 60;
false: other photos named, in all; pass: seeds meeting the issue's test (>= 2 of the 3 named,
<= 3 others); clean: photos named with nothing moved (of 50).

==============================================  =====  =====  =====  =====
rule                                            found  false  pass   clean
==============================================  =====  =====  =====  =====
**p(own) < 0.1, another class most probable**   58     4      20/20  0
p(own) < 0.05                                   53     4      19/20  0
p(own) < 0.2                                    60     11     20/20  0
argmax another class, p >= 0.5                  55     53     14/20  4
argmax another class, p >= 0.7                  43     4      16/20  3
confident learning's per-class thresholds       41     43     13/20  2
cleanlab 2.9.0 ``find_label_issues`` (default)  43     40     15/20  2
cleanlab ``filter_by="both"``                   43     36     16/20  2
cleanlab ``filter_by="low_self_confidence"``    56     25     19/20  2
==============================================  =====  =====  =====  =====

The same with ``--head normalized-mean`` (no power transform, ``softmax(s * cos)``): the rule
55 / 6 / 19/20 / 1, argmax p >= 0.5 50 / 55 / 13/20 / 6, cleanlab (default) 49 / 64 / 12/20 / 3,
its best filter (``both``) 49 / 54 / 14/20. On 10 other classes (2, 3, 5-10, 12, 13; not looked
at when 0.1 was chosen), default head: the rule 56 / 5 / 20/20 / 1, argmax p >= 0.5 54 / 61 /
13/20 / 5, cleanlab (default) 41 / 64 / 9/20 / 2, its best filter (``low_self_confidence``)
58 / 43 / 16/20 / 2. (The measurement's seeds draw photos in the benchmark's class order; the
test's seed 0 draws from the sorted paths: all 3 named, none other.)

The photos a plain argmax rule or cleanlab names falsely are those of look-alike classes, with
p(own) of 0.2-0.45: unsure, not confidently another class; a moved photo's p(own) is almost
always below 0.1 (median 0.003-0.006) and its ``looks_like`` is mostly its real class (about
9 in 10). Confident learning estimates per-class thresholds and noise rates from 5 examples a
class, too few to be steady; cleanlab (and its pandas and scikit-learn, 2 s to import) is
therefore not a dependency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# softmax is re-exported: the same one calibration's leave-one-out probabilities use
from imprinting.calibration import head_scores, leave_one_out, softmax

MAX_OWN_PROBABILITY = 0.1


@dataclass(frozen=True)
class Suspect:
    """A taught example whose leave-one-out prediction is confidently another class."""

    index: int  # its row in the probabilities (the order the examples were taught in)
    label: int  # the class it was taught as
    looks_like: int  # the most probable other class
    probability: float  # leave-one-out probability of ``looks_like``
    own_probability: float  # leave-one-out probability of ``label`` (below the rule's maximum)

    def to_dict(self) -> dict:
        return asdict(self)


def find_suspects(probabilities: np.ndarray, labels: np.ndarray, scored: np.ndarray | None = None, *,
                  max_own_probability: float = MAX_OWN_PROBABILITY) -> list[Suspect]:
    """The examples whose leave-one-out probability of their own class (``labels``, class
    indices) is below ``max_own_probability`` while another class is the most probable, most
    suspicious first (lowest own probability, then index). ``probabilities`` (N, C): each
    example's leave-one-out class probabilities (``leave_one_out_probabilities``); an example
    whose class has one example among ``labels``, or that ``scored`` (N,) bool marks False, is
    never a suspect."""
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or y.ndim != 1 or len(y) != p.shape[0]:
        raise ValueError(f"expected probabilities (N, C) and labels (N,), got {p.shape} and {y.shape}")
    if not 0 < max_own_probability <= 1:
        raise ValueError(f"max_own_probability must be in (0, 1], got {max_own_probability}")
    if len(y) == 0:
        return []
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {p.shape[1]})")
    keep = np.bincount(y, minlength=p.shape[1])[y] >= 2
    if scored is not None:
        scored = np.asarray(scored, bool)
        if scored.shape != y.shape:
            raise ValueError(f"scored must be (N,) = {y.shape}, got {scored.shape}")
        keep &= scored
    rows = np.arange(len(y))
    own = p[rows, y]
    others = p.copy()
    others[rows, y] = -np.inf
    looks_like = others.argmax(axis=1)
    best = others[rows, looks_like]
    flagged = np.flatnonzero(keep & (own < max_own_probability) & (best > own))
    flagged = flagged[np.lexsort((flagged, own[flagged]))]
    return [Suspect(int(i), int(y[i]), int(looks_like[i]), float(best[i]), float(own[i])) for i in flagged]


def leave_one_out_probabilities(table, embeddings: np.ndarray, labels: np.ndarray,
                                scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C), scored (N,) bool): the leave-one-out probabilities exactly as
    ``imprinting.calibration.calibrate_table`` scores them, at ``scale`` (the calibrated scale
    s, or with a closed-form head its temperature: ``Calibration.scale``).

    ``table`` is the ``ClassTable`` taught from exactly these ``embeddings`` (N, D) with these
    ``labels`` (class indices or names). Without a head: ``softmax(scale * cos)``, each example's
    own class's cosine taken with its template recomputed without it
    (``calibration.leave_one_out``); with one: ``softmax(scale * head_scores(..., leave_out=True))``.
    Rows of ``scored`` False (a class with one example) are not leave-one-out scores."""
    y = np.array([table.index_of(v) if isinstance(v, str) else int(v) for v in labels], np.int64)
    e = np.asarray(embeddings, np.float64)
    cos, scored = leave_one_out(table, e, y)
    scores = cos if getattr(table, "head", None) is None else head_scores(table, e, y, True)
    return softmax(float(scale) * scores), scored


__all__ = ["MAX_OWN_PROBABILITY", "Suspect", "find_suspects", "leave_one_out_probabilities", "softmax"]
