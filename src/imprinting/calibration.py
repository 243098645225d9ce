"""Calibrated confidence: the classifier's temperature (the scale s) and an automatic unknown
threshold, fitted from labelled embeddings (numpy and scipy; torch only to apply them).

Probabilities are ``softmax(s * cos)``: with the default s = 10 and 100 classes they are nearly
flat, so the number a user sees means nothing. ``fit_scale`` chooses s by minimizing the
negative log-likelihood (NLL) of the true classes (temperature scaling, Guo et al. 2017) with
``scipy.optimize.minimize_scalar`` over log s.

Where the labelled embeddings come from:

- **leave-one-out** over the examples the classes were taught from (``imprint create
  --from-folder`` has them): each example is scored against its own class's template
  recomputed without it, ``normalize(sum - e)`` (the class sum holds ``count`` normalized
  embeddings, so that is the template of the other ``count - 1``), and against every other
  class's template as it is. A class taught from one example has no template without it: its
  example is not scored, its template still competes for the others.
- **held-out** images (never taught): scored against the templates as they are.

A table with a closed-form head (``table.head``) scores classes with the head's rows, not
``s * cos``: its scale is kept (only the threshold, on cosines, is fitted) until the head has a
temperature of its own.

The unknown threshold, in one of two modes:

- **false reject** (the default, ``target_false_reject=0.05``): the conformal threshold of
  ``imprinting.conformal``: at most that share of photos of taught classes are flagged unknown,
  guaranteed (n examples allow rates down to 1 / (n + 1); below that there is no threshold);
- **false accept** (``target_false_accept``): every example, scored against the *other* classes
  only, plays an image of a class the model was never taught (its class left out entirely); the
  threshold is the lowest best cosine that accepts at most that share of them.

Either way the result reports both rates: ``false_reject`` (the share of the known examples the
threshold flags) and ``false_accept`` (the estimated share of never-taught images it accepts).
The best cosine is the rejection score the project's measurements favour (three declared rounds in
``results/open_set.md``: relative Mahalanobis ranks never-taught photos better but its threshold
flags too many photos of taught classes; ``docs/calibration.md``; also
``results/cub/unknown_96px.md``). The same leave-one-out scores give
the prediction sets' threshold (``Calibration.conformal``, kept with the model).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from imprinting.calibration_set import CalibrationSet
from imprinting.classes import normalize_rows
from imprinting.conformal import ConformalScores, scores_from
from imprinting.errors import UserError

DEFAULT_FALSE_REJECT = 0.05

SCALE_BOUNDS = (0.5, 1000.0)  # s multiplies cosines, in [-1, 1]
TEMPERATURE_BOUNDS = (1e-3, 100.0)  # a closed-form head's temperature multiplies scores of tens to hundreds


class CalibrationError(UserError):
    """Not enough labelled examples to calibrate, or examples that do not fit the classes."""


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` found (and ``apply`` sets)."""

    method: str  # "leave-one-out" or "held-out"
    scale_before: float
    scale: float  # the fitted s (scale_before when it could not be fitted)
    nll_before: float | None  # mean NLL of the scored examples at scale_before (None: none scored)
    nll_after: float | None
    scored: int  # examples in the NLL
    unknown_threshold: float | None  # None: fewer than two classes, or too few examples for the rate
    target_false_accept: float | None  # the false-accept mode's target (None: false-reject mode)
    false_reject: float | None  # share of known scored examples below the threshold
    target_false_reject: float | None = None  # the false-reject mode's target, guaranteed (None: the other mode)
    false_accept: float | None = None  # estimated share of never-taught images accepted (leave-one-class-out)
    conformal: ConformalScores | None = None  # the scores behind the threshold and the prediction sets
    note: str | None = None  # why there is no threshold, when there is none
    kept: CalibrationSet | None = None  # the examples, kept with the classes (leave-one-out calibrations)

    def to_dict(self) -> dict:
        """JSON-able: the conformal scores as their count (``calibration_examples``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("conformal", "kept")}
        out["calibration_examples"] = 0 if self.conformal is None else self.conformal.n
        return out


def nll(scale: float, cosines: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(scale * cosines)``."""
    from scipy.special import logsumexp  # slow import: scipy only when fitting

    z = scale * np.asarray(cosines, np.float64)
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(z)), labels]))


def fit_scale(cosines: np.ndarray, labels: np.ndarray, bounds=SCALE_BOUNDS) -> float:
    """The scale s minimizing ``nll`` (searched over log s within ``bounds``)."""
    from scipy.optimize import minimize_scalar  # slow import: scipy only when fitting

    if len(labels) == 0:
        raise CalibrationError("no labelled examples to fit the scale on")
    lo, hi = np.log(bounds)
    res = minimize_scalar(lambda t: nll(np.exp(t), cosines, labels), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def leave_one_out(table, embeddings: np.ndarray, labels: np.ndarray,
                  subset: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(cosines (N, C), scored (N,) bool): each example against its class's template without it.

    ``embeddings`` must be exactly the examples the labelled classes were taught from (all of
    them: their normalized sum is the class's sum), else a ``CalibrationError``; with ``subset``,
    some of them (a sample kept by ``imprinting.calibration_set``: no more than the class holds)."""
    cos = _cosines(table, embeddings)
    e = normalize_rows(np.asarray(embeddings, np.float64))
    sums, counts = np.asarray(table.sums), np.asarray(table.counts)
    for c in np.unique(labels):
        mine = labels == c
        if subset:
            if mine.sum() > counts[c]:
                raise CalibrationError(f"class {table.name_at(int(c))!r}: {int(mine.sum())} kept examples, but it "
                                       f"was taught from {int(counts[c])}")
            continue
        if counts[c] != mine.sum() or not np.allclose(e[mine].sum(axis=0), sums[c], atol=1e-4 * max(1, counts[c])):
            raise CalibrationError(
                f"class {table.name_at(int(c))!r}: these {int(mine.sum())} images are not the {int(counts[c])} "
                "examples it was taught from (leave-one-out needs exactly those; use held-out images instead)")
    dot = np.einsum("nd,nd->n", e, sums[labels])
    norm2 = np.einsum("nd,nd->n", sums[labels], sums[labels]) - 2 * dot + 1
    scored = counts[labels] >= 2
    own = np.where(scored, (dot - 1) / np.sqrt(np.maximum(norm2, 1e-12)), -1.0)
    cos[np.arange(len(e)), labels] = own
    return cos, scored


def _cosines(table, embeddings) -> np.ndarray:
    """The cosines exactly as a prediction computes them (float32, ``ClassTable.cosines``), so a
    threshold found on them flags the same images; float64 for the fit."""
    e = normalize_rows(np.asarray(embeddings, np.float32))
    return table.cosines(e).astype(np.float64)


def threshold_for(unknown_scores: np.ndarray, target_false_accept: float) -> float:
    """The lowest best-cosine threshold accepting at most ``target_false_accept`` of these
    never-taught scores (accepted: score >= threshold, as the prediction's ``unknown`` flag)."""
    s = np.sort(np.asarray(unknown_scores, np.float32))[::-1]
    k = int(np.floor(target_false_accept * len(s)))
    if k >= len(s):
        return float(s[-1])
    return float(np.nextafter(s[k], np.float32(np.inf)))


def calibrate_table(table, embeddings, labels, method: str = "leave-one-out", target_false_accept: float | None = None,
                    *, target_false_reject: float | None = None, fit: bool = True, subset: bool = False,
                    scale: float | None = None) -> Calibration:
    """Fit the scale and the unknown threshold of ``table``'s classes (a ``ClassTable``) from
    ``embeddings`` (N, D) labelled with class indices or names (see the module): for
    ``target_false_accept`` if given, else for ``target_false_reject`` (default 0.05).

    With ``fit=False`` the scale stays the table's (only the scores and the threshold are
    computed: what ``imprinting.calibration_set`` recomputes after a change of the classes);
    ``subset`` allows leave-one-out on some of a class's examples (``leave_one_out``); ``scale``
    replaces the table's. A leave-one-out fit keeps the examples (``Calibration.kept``, at most
    ``calibration_set.MAX_ROWS``): the scale is fitted on all of them, the threshold and the
    scores come from those kept, as they will after every change of the classes."""
    if target_false_accept is not None and target_false_reject is not None:
        raise CalibrationError("choose one: a target false-accept rate or a target false-reject rate")
    if target_false_accept is None and target_false_reject is None:
        target_false_reject = DEFAULT_FALSE_REJECT
    if target_false_accept is not None and not 0 <= target_false_accept < 1:
        raise CalibrationError(f"the target false-accept rate must be in [0, 1), got {target_false_accept}")
    if target_false_reject is not None and not 0 < target_false_reject < 1:
        raise CalibrationError(f"the target false-reject rate must be in (0, 1), got {target_false_reject}")
    if method not in ("leave-one-out", "held-out"):
        raise CalibrationError(f"method must be 'leave-one-out' or 'held-out', got {method!r}")
    labels = np.array([table.index_of(y) if isinstance(y, str) else int(y) for y in labels], np.int64)
    e = np.asarray(embeddings, np.float64)
    if e.ndim != 2 or e.shape[0] != len(labels) or e.shape[0] == 0 or e.shape[1] != table.dim:
        raise CalibrationError(f"expected (n >= 1, {table.dim}) embeddings with one label each, got {e.shape}")
    e = normalize_rows(e).astype(np.float32).astype(np.float64)  # unit float32 rows, as they are kept
    if method == "leave-one-out":
        cos, scored = leave_one_out(table, e, labels, subset)
    else:
        cos, scored = _cosines(table, e), np.ones(len(e), bool)
    before = float(np.mean(table.scale)) if scale is None else float(scale)
    y = labels[scored]
    scores = cos  # what the softmax multiplies: cosines, or a closed-form head's scores
    if getattr(table, "head", None) is not None:
        before = float(table.head.temperature) if scale is None else float(scale)
        scores = head_scores(table, e, labels, method == "leave-one-out")
    bounds = SCALE_BOUNDS if getattr(table, "head", None) is None else TEMPERATURE_BOUNDS
    scale = fit_scale(scores[scored], y, bounds) if scored.any() and fit else before
    if getattr(table, "head", None) is None:
        scale = float(np.float32(scale))  # as the classifier keeps it
    kept = None
    if method == "leave-one-out" and fit:
        kept = CalibrationSet(e, [table.name_at(int(i)) for i in labels], target_false_reject, target_false_accept)
        if len(kept) < len(e):  # a sample kept: the scores and the threshold from it, at the fitted scale
            sub = calibrate_table(table, kept.embeddings, kept.labels, method, target_false_accept,
                                  target_false_reject=target_false_reject, fit=False, subset=True, scale=scale)
            return replace(sub, scale_before=before, nll_before=nll(before, scores[scored], y) if scored.any() else None,
                           nll_after=nll(scale, scores[scored], y) if scored.any() else None, kept=kept)
    fitted = scored.any() and fit  # the NLLs only when fitting: recomputing needs no scipy (the lite runtime)
    others_best = np.zeros(0)
    if len(table) >= 2:
        others = cos.copy()
        others[np.arange(len(e)), labels] = -np.inf  # its class never taught: the best of the others
        others_best = others.max(axis=1)
    conformal = scores_from(cos[scored], others_best[scored] if len(others_best) else others_best,
                            softmax(scale * scores[scored]), y, table.names) if scored.any() else None
    threshold = note = None
    if target_false_accept is not None:
        threshold = threshold_for(others_best, target_false_accept) if len(others_best) else None
        note = None if threshold is not None else "one class: nothing to tell it from, no unknown threshold"
    elif conformal is None:
        note = "no class has two examples: nothing to score by leave-one-out, no unknown threshold"
    else:
        threshold = conformal.unknown_threshold(target_false_reject)
        if threshold is None:
            note = (f"{conformal.n} examples scored: too few for a false-reject rate of {target_false_reject:g} (it "
                    f"needs {ConformalScores.min_examples(target_false_reject)}); no unknown threshold")
    false_reject = conformal.false_reject_at(threshold) if conformal is not None else None
    false_accept = conformal.false_accept_at(threshold) if conformal is not None else None
    return Calibration(method, before, scale, nll(before, scores[scored], y) if fitted else None,
                       nll(scale, scores[scored], y) if fitted else None, int(scored.sum()), threshold,
                       target_false_accept, false_reject, target_false_reject, false_accept, conformal, note, kept)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (the prediction's probabilities, from its logits)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def head_scores(table, embeddings: np.ndarray, labels: np.ndarray, leave_out: bool) -> np.ndarray:
    """A closed-form head's scores at temperature 1 (``imprinting.heads.WhitenedHead``), (N, C);
    with ``leave_out``, each example's own class scored by the row its class would have without
    it (its sum less the example, one example fewer, at the correction the table gives that many:
    ``table.head_rows_of``), as for cosines."""
    head = table.head
    e = normalize_rows(np.asarray(embeddings, np.float32))
    scores = head.scores(e, *table.head_rows()).astype(np.float64)
    if leave_out:
        counts = np.asarray(table.counts)[labels]
        own = counts >= 2
        sums = np.asarray(table.sums)[labels][own] - e[own].astype(np.float64)
        w1, b1 = table.head_rows_of(sums, counts[own] - 1, np.asarray(table.templates)[labels][own])
        idx = np.flatnonzero(own)
        scores[idx, labels[own]] = np.einsum("nd,nd->n", e[own] - head.centre, w1.astype(np.float64)) + b1
    return scores


def calibrate(model, embeddings, labels, method: str = "leave-one-out", target_false_accept: float | None = None,
              set_threshold: bool = True, *, target_false_reject: float | None = None) -> Calibration:
    """``calibrate_table`` on ``model.classes`` and ``apply`` the result to ``model``."""
    if getattr(model.classifier, "scale_rows", None) is None:
        raise CalibrationError("only a cosine classifier has a scale to calibrate")
    emb = embeddings.detach().cpu().numpy() if hasattr(embeddings, "detach") else embeddings
    result = calibrate_table(model.classes, emb, labels, method, target_false_accept,
                             target_false_reject=target_false_reject)
    apply(model, result, set_threshold)
    return result


def apply(model, result: Calibration, set_threshold: bool = True) -> None:
    """Set the model's scale (every class's, with per-class scales), its calibration scores
    (``model.conformal``: the result's, None included), the examples they came from (kept with
    the class table, so that scores and threshold follow later changes of the classes) and,
    with ``set_threshold``, its unknown threshold."""
    sets = set_threshold and (result.unknown_threshold is not None or result.target_false_reject is not None)
    if not sets and model.threshold_follows:  # the threshold in force stays, pinned as it is now
        model.unknown_threshold = model.unknown_threshold
    if model.classes.head is not None:  # a closed-form head: the scale is its temperature
        model.classes.head.temperature = float(result.scale)
    else:
        model.classifier.scale.detach().fill_(result.scale)  # no autograd; the shared version counter moves
    table = model.classes  # up to date with the new scale
    table.calibration = result.kept  # the examples, to follow the classes (None: fixed scores)
    if result.kept is not None and result.scale == (table.head.temperature if table.head is not None
                                                      else float(np.mean(table.scale))):
        result.kept.seed(table, result)  # what it gives for these classes at this scale: this result
    if sets:
        model.unknown_threshold = result.unknown_threshold  # None: too few examples for the rate asked
        model.threshold_follows = result.kept is not None
    model.conformal = result.conformal  # None: nothing scored this time, so no sets (not the old ones)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE: the mean, weighted by how many predictions fall in each of ``bins`` equal-width
    confidence bins, of |accuracy - mean confidence| in the bin."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total / max(len(confidence), 1))


# -- the calibration in force, following the classes (imprinting.calibration_set) ------------
def kept_result(kept: CalibrationSet, table) -> Calibration:
    """``Calibration`` of ``table``'s classes from the examples ``kept``, at the table's scale,
    as one batch computation (``calibrate_table(..., fit=False)``), kept until the table changes
    (``ClassTable.version``). Examples of classes the table no longer has are left out, and never
    more of a class than it holds (a replica behind its store)."""
    key = (id(table), table.version)  # read first: a change while computing leaves the result for this one
    memo = kept.peek_key()
    if memo is not None and memo[0] == key:
        return memo[1]
    counts = dict(zip(table.names, table.counts.tolist()))
    seen: dict[str, int] = {}
    keep = []
    for i, name in enumerate(kept.labels):
        if seen.get(name, 0) < counts.get(name, 0):
            keep.append(i)
            seen[name] = seen.get(name, 0) + 1
    try:
        result = calibrate_table(table, kept.embeddings[keep], [kept.labels[i] for i in keep], "leave-one-out",
                                 kept.target_false_accept, target_false_reject=kept.target_false_reject,
                                 fit=False, subset=True)
    except (CalibrationError, TypeError, ValueError) as exc:  # none kept among the classes (or damaged)
        scale = float(table.head.temperature) if table.head is not None else float(np.mean(table.scale))
        result = Calibration("leave-one-out", scale, scale, None, None, 0, None, kept.target_false_accept, None,
                             kept.target_false_reject, None, None, f"nothing to calibrate from: {exc}")
    kept.seed_key(key, result)
    return result


def in_force(table, threshold, conformal, follows: bool):
    """(unknown threshold, conformal scores) a model or runtime predicts with: those its kept
    calibration examples give for the classes of now when ``table`` keeps some (the threshold
    only when it ``follows`` the calibration, i.e. was not set by hand), else the fixed ones
    (files and stores from before the examples were kept)."""
    if table.calibration is None:
        return threshold, conformal
    result = kept_result(table.calibration, table)
    return (result.unknown_threshold if follows else threshold), result.conformal
