"""A calibration follows the classes (``imprinting.calibration_set``): after classes are added,
extended or removed, the scores, the unknown threshold and the prediction sets are what one
batch computation over the kept examples gives for the classes of now. Expectations are
leave-one-out cosines, softmax probabilities and order statistics recomputed here by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import imprinting
from imprinting import calibration_set, checkpoint
from imprinting.calibration import calibrate, calibrate_table, kept_result
from imprinting.calibration_set import CalibrationSet
from imprinting.classes import ClassTable
from imprinting.classes_file import ClassesData, load_classes, save_classes

ALPHA = 0.1


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def examples(seed: int, names, per_class: int = 8, dim: int = 16) -> dict:
    rng = np.random.default_rng(seed)
    return {n: (rng.normal(size=dim) * 1.2 + rng.normal(size=(per_class, dim))).astype(np.float32) for n in names}


def by_hand(ex: dict, order, scale: float, alpha: float = ALPHA):
    """(known, others, nonconformity, threshold) of every example of every class in ``order``:
    leave-one-out cosines with the other classes' templates as they are, by hand."""
    u = {n: unit(unit(ex[n]).astype(np.float32)) for n in order}  # the float32 rows kept
    sums = {n: unit(ex[n]).astype(np.float32).astype(np.float64).sum(axis=0) for n in order}
    templates = unit(np.stack([sums[n] for n in order]))
    known, others, nonconf = [], [], []
    for j, n in enumerate(order):
        for e in u[n]:
            cos = templates @ e
            own = sums[n] - e
            cos[j] = own @ e / np.linalg.norm(own)
            known.append(cos.max())
            others.append(np.delete(cos, j).max())
            p = np.exp(scale * cos - (scale * cos).max())
            nonconf.append(1 - p[j] / p.sum())
    k = math.floor((len(known) + 1) * alpha)
    return np.sort(known), np.sort(others), np.sort(nonconf), np.sort(known)[k - 1]


def test_adding_and_removing_classes_recomputes_as_one_batch_would():
    model = imprinting.create_model("conv4", pretrained=False, dim=None).eval()
    dim = model.embedder.dim
    ex = examples(0, ["a", "b", "c", "d", "e"], dim=dim)
    for n in "abc":
        model.add_class(n, torch.from_numpy(ex[n]))
    result = calibrate(model, np.concatenate([ex[n] for n in "abc"]), [n for n in "abc" for _ in range(8)],
                       target_false_reject=ALPHA)
    scale = float(model.classes.scale[0])
    known, others, nonconf, threshold = by_hand(ex, "abc", scale)
    np.testing.assert_allclose(model.conformal.known, known, atol=1e-6)
    assert model.unknown_threshold == pytest.approx(threshold, abs=1e-6) == result.unknown_threshold

    model.add_class("d", torch.from_numpy(ex["d"]))
    model.add_class("e", torch.from_numpy(ex["e"][:4]))
    model.add_examples("e", torch.from_numpy(ex["e"][4:]))  # extended: all its examples kept
    model.remove_class("b")
    known, others, nonconf, threshold = by_hand(ex, "acde", scale)
    c = model.conformal
    assert c.n == 32 and c.classes == ("a", "c", "d", "e") and not c.stale_for(model.classes.names)
    np.testing.assert_allclose(c.known, known, atol=1e-6)
    np.testing.assert_allclose(c.others, others, atol=1e-6)
    np.testing.assert_allclose(c.nonconformity, nonconf, atol=1e-6)
    assert model.unknown_threshold == pytest.approx(threshold, abs=1e-6)
    # a prediction flags and sets with the recomputed values
    q = c.set_threshold(0.9)
    probe = torch.from_numpy(unit(ex["d"][:3]).astype(np.float32))
    for p in model.predict_embeddings(probe, k=4, coverage=0.9):
        assert p.unknown == (p.cosines[0] < model.unknown_threshold)
        assert p.set == [n for n, pr in zip(p.classes, p.probabilities) if 1 - pr <= q]

    # the same as a table built at once from the final classes, calibrated in one batch at this scale
    fresh = ClassTable(dim, initial_scale=scale)
    for n in "acde":
        fresh.add(n, ex[n])
    batch = calibrate_table(fresh, np.concatenate([ex[n] for n in "acde"]), [n for n in "acde" for _ in range(8)],
                            target_false_reject=ALPHA, fit=False)
    for name in ("known", "others", "nonconformity"):
        np.testing.assert_allclose(getattr(c, name), getattr(batch.conformal, name), atol=1e-6)
    assert batch.unknown_threshold == pytest.approx(model.unknown_threshold, abs=1e-6)


def test_an_undo_of_a_removal_restores_the_kept_examples_and_their_scores():
    ex = examples(1, "abc")
    table = ClassTable(16)
    for n in "abc":
        table.add(n, ex[n])
    result = calibrate_table(table, np.concatenate([ex[n] for n in "abc"]), [n for n in "abc" for _ in range(8)],
                             target_false_reject=ALPHA)
    table.calibration = result.kept
    before = kept_result(table.calibration, table)
    snap = table.snapshot("b")
    table.remove("b")
    assert len(table.calibration) == 16 and kept_result(table.calibration, table).conformal.n == 16
    table.restore(snap)
    again = kept_result(table.calibration, table)
    np.testing.assert_array_equal(again.conformal.known, before.conformal.known)
    assert again.unknown_threshold == before.unknown_threshold


def test_the_kept_sample_does_not_depend_on_the_teaching_order(monkeypatch):
    monkeypatch.setattr(calibration_set, "MAX_ROWS", 10)
    ex = examples(2, "abcd", per_class=6)
    one = CalibrationSet(np.zeros((0, 16)), (), target_false_reject=ALPHA)
    for n in "abcd":
        one = one.with_examples(n, unit(ex[n]))
    other = CalibrationSet(np.zeros((0, 16)), (), target_false_reject=ALPHA)
    for n in "dbca":
        for row in unit(ex[n])[::-1]:
            other = other.with_examples(n, row[None])
    assert len(one) == 10 and one.labels == other.labels
    np.testing.assert_array_equal(one.embeddings, other.embeddings)
    # the kept rows are the 10 smallest keys of all 24
    every = unit(np.concatenate([ex[n] for n in "abcd"])).astype(np.float32)
    keys = calibration_set._keys(every, [n for n in "abcd" for _ in range(6)])
    assert sorted(one.labels) == sorted(np.array([n for n in "abcd" for _ in range(6)])[np.argsort(keys)[:10]])


def test_the_kept_examples_travel_in_checkpoints_and_classes_files(tmp_path):
    model = imprinting.create_model("conv4", pretrained=False, dim=None).eval()
    ex = examples(3, "abc", dim=model.embedder.dim)
    for n in "abc":
        model.add_class(n, torch.from_numpy(ex[n]))
    calibrate(model, np.concatenate([ex[n] for n in "abc"]), [n for n in "abc" for _ in range(8)],
              target_false_reject=ALPHA)
    checkpoint.save(model, tmp_path / "m.safetensors")
    loaded = checkpoint.load(tmp_path / "m.safetensors")
    data = ClassesData.from_table(model.classes, model.unknown_threshold, conformal=model.conformal,
                                  threshold_follows=model.threshold_follows)
    save_classes(data, tmp_path / "classes.npz")
    table = load_classes(tmp_path / "classes.npz").table()
    assert loaded.threshold_follows and load_classes(tmp_path / "classes.npz").threshold_follows
    new = unit(examples(4, "z", dim=model.embedder.dim)["z"]).astype(np.float32)
    for m in (model, loaded):
        m.add_class("z", torch.from_numpy(new))
        m.remove_class("a")
    table.add("z", new)
    table.remove("a")
    want = kept_result(table.calibration, table)
    for m in (model, loaded):
        np.testing.assert_allclose(m.conformal.nonconformity, want.conformal.nonconformity, atol=1e-6)
        assert m.unknown_threshold == pytest.approx(want.unknown_threshold, abs=1e-6)
    _, _, _, threshold = by_hand({**ex, "z": new}, "bcz", float(model.classes.scale[0]))
    assert want.unknown_threshold == pytest.approx(threshold, abs=1e-6)


def test_files_without_kept_examples_keep_their_fixed_scores(tmp_path):
    model = imprinting.create_model("conv4", pretrained=False, dim=None).eval()
    ex = examples(5, "abc", dim=model.embedder.dim)
    for n in "abc":
        model.add_class(n, torch.from_numpy(ex[n]))
    result = calibrate(model, np.concatenate([ex[n] for n in "abc"]), [n for n in "abc" for _ in range(8)],
                       target_false_reject=ALPHA)
    model.classes.calibration = None  # as a file from before the examples were kept
    model.add_class("z", torch.from_numpy(ex["a"] + 3))
    assert model.conformal is result.conformal and model.conformal.stale_for(model.classes.names)
    assert model.unknown_threshold == result.unknown_threshold


def test_a_threshold_kept_by_hand_is_not_replaced_by_the_next_calibration():
    model = imprinting.create_model("conv4", pretrained=False, dim=None).eval()
    ex = examples(6, "abc", dim=model.embedder.dim)
    for n in "abc":
        model.add_class(n, torch.from_numpy(ex[n]))
    e, y = np.concatenate([ex[n] for n in "abc"]), [n for n in "abc" for _ in range(8)]
    first = calibrate(model, e, y, target_false_reject=ALPHA)
    assert model.threshold_follows and model.unknown_threshold == first.unknown_threshold
    second = calibrate(model, e, y, target_false_reject=0.3, set_threshold=False)  # imprint calibrate --keep-threshold
    assert second.unknown_threshold != first.unknown_threshold
    assert model.unknown_threshold == first.unknown_threshold and not model.threshold_follows
    model.add_class("z", torch.from_numpy(ex["a"][::-1] + 2))
    assert model.unknown_threshold == first.unknown_threshold  # pinned: the classes changing leave it


@pytest.mark.parametrize("field, value, problem", [
    ("target_false_reject", "0.1", "not a rate"), ("target_false_reject", 5, "not a rate"),
    ("labels", list(range(16)), "list of class names"),
])
def test_a_damaged_kept_calibration_is_a_clear_error_at_load(tmp_path, field, value, problem):
    from imprinting.errors import ExportFormatError

    ex = examples(7, "ab")
    table = ClassTable(16)
    for n in "ab":
        table.add(n, ex[n])
    table.calibration = calibrate_table(table, np.concatenate([ex[n] for n in "ab"]), [n for n in "ab" for _ in range(8)],
                                        target_false_reject=ALPHA).kept
    data = ClassesData.from_table(table, threshold_follows=True)
    save_classes(data, tmp_path / "classes.npz")
    with np.load(tmp_path / "classes.npz") as f:
        arrays = dict(f)
    header = json.loads(arrays["header"].tobytes())
    header["calibration"][field] = value
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(tmp_path / "bad.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ExportFormatError, match=problem):
        load_classes(tmp_path / "bad.npz")
    # an older runtime saving the file back keeps the header's field but not the array: no kept examples
    del arrays["calibration_embeddings"]
    arrays["header"] = np.frombuffer(json.dumps({**header, "calibration": data.header()["calibration"]}).encode(),
                                     np.uint8)
    with open(tmp_path / "older.npz", "wb") as f:
        np.savez(f, **arrays)
    older = load_classes(tmp_path / "older.npz")
    assert older.calibration is None and not older.threshold_follows and older.table().names == ("a", "b")
