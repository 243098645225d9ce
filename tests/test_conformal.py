"""Conformal thresholds and prediction sets (``imprinting.conformal``), the calibration that
makes them (``calibration.calibrate_table``'s false-reject mode), and their journey through a
checkpoint. Expectations are order statistics and probabilities recomputed here by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import imprinting
from imprinting import checkpoint
from imprinting.calibration import calibrate, calibrate_table
from imprinting.classes import ClassTable
from imprinting.conformal import ConformalError, ConformalScores, prediction_set, set_q


def scores(known, nonconformity=None, others=()):
    known = np.asarray(known, float)
    return ConformalScores(known, np.asarray(others, float), known if nonconformity is None else nonconformity)


def test_the_unknown_threshold_is_the_floor_n_plus_1_alpha_th_smallest():
    s = scores([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])  # n = 9
    assert s.unknown_threshold(0.1) == 0.1  # floor(10 * 0.1) = 1: the smallest
    assert s.unknown_threshold(0.25) == 0.2  # floor(2.5) = 2
    assert s.unknown_threshold(0.5) == 0.5  # floor(5) = 5
    assert s.unknown_threshold(0.09) is None  # floor(0.9) = 0: too few examples for 9 %
    assert ConformalScores.min_examples(0.05) == 19 and ConformalScores.min_examples(0.1) == 9
    assert scores(np.arange(19) / 19).unknown_threshold(0.05) == 0.0  # 19 examples: the first for 5 %
    assert scores(np.arange(18) / 18).unknown_threshold(0.05) is None
    # flagged = best cosine below the threshold: an example at the threshold itself is kept
    assert s.false_reject_at(0.5) == pytest.approx(4 / 9) and s.false_reject_at(None) == 0.0


def test_false_accepts_are_estimated_from_the_scores_against_the_other_classes():
    s = scores([0.9, 0.8], others=[0.1, 0.5, 0.6, 0.95])
    assert s.false_accept_at(0.55) == 0.5 and s.false_accept_at(None) == 1.0
    assert scores([0.9]).false_accept_at(0.5) is None  # one class: nothing to estimate from


def test_the_set_threshold_is_the_ceil_n_plus_1_coverage_th_smallest():
    nc = np.array([0.05, 0.5, 0.2, 0.9, 0.1, 0.3, 0.7, 0.4, 0.6, 0.8])  # n = 10
    s = scores(np.zeros(10), nc)
    assert s.set_threshold(0.5) == 0.5  # ceil(11 * 0.5) = 6: the sixth smallest
    assert s.set_threshold(0.8) == 0.8  # ceil(8.8) = 9: the ninth
    assert s.set_threshold(0.9) == 0.9  # ceil(9.9) = 10: the largest
    assert s.set_threshold(0.95) == math.inf  # ceil(10.45) = 11 > n: every class in every set
    for bad in (0, 1, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            s.set_threshold(bad)


def test_a_set_is_every_class_whose_nonconformity_is_at_most_q():
    p = np.array([0.05, 0.6, 0.3, 0.05])
    assert prediction_set(p, 0.7).tolist() == [1, 2]  # 1 - p = .95 .4 .7 .95: most probable first
    assert prediction_set(p, 0.69).tolist() == [1]
    assert prediction_set(p, 0.3).tolist() == []  # empty: not one of my classes
    assert prediction_set(p, math.inf).tolist() == [1, 2, 0, 3]


def test_the_guarantees_hold_on_exchangeable_scores():
    """Over many draws of exchangeable calibration and test scores, the share of test scores
    below the threshold is at most alpha, and the sets cover at least 1 - alpha (the theory's
    promise, checked by simulation: 2,000 draws, so the means are within 0.5 points)."""
    rng = np.random.default_rng(0)
    flagged, covered = [], []
    for _ in range(2000):
        known = rng.normal(size=40)
        s = scores(known, nonconformity=rng.uniform(size=40))
        t = s.unknown_threshold(0.1)
        flagged.append(rng.normal() < t)
        covered.append(rng.uniform() <= s.set_threshold(0.9))
    assert np.mean(flagged) <= 0.1 + 0.01 and np.mean(flagged) >= 0.1 - 0.04  # floor(41 * .1) / 41 = 9.8 %
    assert np.mean(covered) >= 0.9 - 0.01


def test_scores_round_trip_as_json_and_damage_is_named():
    s = scores([0.3, 0.1], nonconformity=[0.2, 0.9], others=[0.05])
    back = ConformalScores.from_json(s.to_json())
    for name in ("known", "others", "nonconformity"):
        assert np.array_equal(getattr(back, name), getattr(s, name))
    with pytest.raises(ValueError, match="NaN"):
        ConformalScores.from_json({**s.to_json(), "known": [0.1, float("nan")]})
    with pytest.raises(ValueError, match="expected an object"):
        ConformalScores.from_json({"known": [1]})
    with pytest.raises(ConformalError, match="calibrate it first"):
        set_q(None, 0.9)
    assert set_q(None, None) is None


# -- calibration ------------------------------------------------------------------------
def clustered(seed=0, classes=4, per_class=6, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    e = np.concatenate([centres[c] + 0.6 * rng.normal(size=(per_class, dim)) for c in range(classes)])
    return e.astype(np.float32), np.repeat(np.arange(classes), per_class)


def test_calibration_defaults_to_a_guaranteed_false_reject_rate():
    e, y = clustered()
    table = ClassTable(e.shape[1])
    for c in range(4):
        table.add(f"c{c}", e[y == c])
    result = calibrate_table(table, e, y, target_false_reject=0.1)
    # by hand: each example's best cosine, its own class's template recomputed without it
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    best = []
    for i in range(len(u)):
        rows = []
        for c in range(4):
            members = u[(y == c) & (np.arange(len(u)) != i)]
            t = members.sum(axis=0)
            rows.append(u[i] @ t / np.linalg.norm(t))
        best.append(max(rows))
    want = np.sort(best)[math.floor(25 * 0.1) - 1]  # n = 24: the second smallest
    assert result.unknown_threshold == pytest.approx(want, abs=1e-5)
    assert result.target_false_reject == 0.1 and result.target_false_accept is None
    assert result.false_reject == pytest.approx(np.mean(np.array(best) < result.unknown_threshold), abs=1e-9)
    assert result.conformal.n == 24 and 0 <= result.false_accept <= 1
    # the default is 5 %, which 24 examples allow (19 are needed)
    assert calibrate_table(table, e, y).target_false_reject == 0.05


def test_too_few_examples_for_the_rate_leave_unknown_off():
    e, y = clustered(per_class=3, classes=3)  # 9 examples: 5 % needs 19
    table = ClassTable(e.shape[1])
    for c in range(3):
        table.add(f"c{c}", e[y == c])
    result = calibrate_table(table, e, y, target_false_reject=0.05)
    assert result.unknown_threshold is None and "too few" in result.note and "19" in result.note
    assert result.false_reject == 0.0  # nothing flagged without a threshold


def test_a_model_keeps_its_scores_through_a_checkpoint_and_predicts_sets(tmp_path):
    import torch

    model = imprinting.create_model("conv4", pretrained=False, dim=None)
    e, y = clustered(dim=model.embedder.dim, per_class=8)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    for c in range(4):
        model.add_class(f"c{c}", torch.from_numpy(e[y == c]))
    names = [f"c{c}" for c in y]
    with pytest.raises(ConformalError):
        model.predict_embeddings(torch.from_numpy(e[:2]), coverage=0.9)  # not calibrated yet
    result = calibrate(model, e, names)
    assert model.unknown_threshold == result.unknown_threshold and model.conformal is result.conformal
    path = tmp_path / "m.safetensors"
    checkpoint.save(model, path)
    loaded = checkpoint.load(path)
    assert np.array_equal(loaded.conformal.nonconformity, result.conformal.nonconformity)
    q = result.conformal.set_threshold(0.8)
    for m in (model, loaded):
        for p, row in zip(m.predict_embeddings(torch.from_numpy(e[:6]), k=4, coverage=0.8), e[:6]):
            probs = dict(zip(p.classes, p.probabilities))  # k = 4: every class
            assert p.set == sorted([c for c, pr in probs.items() if 1 - pr <= q], key=lambda c: -probs[c])
