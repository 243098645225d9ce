"""Calibrated confidence: the scale by leave-one-out or held-out NLL, the automatic unknown
threshold, ECE, and ``imprint create --from-folder`` / ``imprint calibrate``."""

import json

import numpy as np
import pytest
import torch

from helpers import make_image, run_cli as run
from imprinting import checkpoint
from imprinting.build import create_head
from imprinting.calibration import (CalibrationError, calibrate, calibrate_table, expected_calibration_error,
                                    fit_scale, leave_one_out, nll, threshold_for)
from imprinting.classes import ClassTable


def _clusters(rng, classes=6, per_class=(1, 3, 4, 5, 5, 6), dim=12, spread=0.6):
    centres = rng.normal(size=(classes, dim))
    e, y = [], []
    for c, n in enumerate(per_class[:classes]):
        e.append(centres[c] + spread * rng.normal(size=(n, dim)))
        y += [c] * n
    e = np.concatenate(e)
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32), np.array(y)


def _table(e, y):
    table = ClassTable(e.shape[1])
    for c in np.unique(y):
        table.add(f"c{c}", e[y == c])
    return table


def test_leave_one_out_cosines_match_a_table_rebuilt_without_each_example():
    rng = np.random.default_rng(0)
    e, y = _clusters(rng)
    table = _table(e, y)
    cos, scored = leave_one_out(table, e, y)
    assert scored.tolist() == (y != 0).tolist()  # class 0 has one example: not scored
    for i in range(len(e)):
        if not scored[i]:
            np.testing.assert_allclose(np.delete(cos[i], y[i]), np.delete(table.cosines(e[i:i + 1])[0], y[i]), atol=1e-6)
            continue
        rest = np.delete(np.arange(len(e)), i)
        without = _table(e[rest], y[rest])  # every class imprinted again, example i left out
        np.testing.assert_allclose(cos[i], without.cosines(e[i:i + 1])[0], atol=1e-5)


def test_fit_scale_minimizes_the_nll():
    rng = np.random.default_rng(1)
    e, y = _clusters(rng, per_class=(5,) * 6, spread=1.5)  # overlapping classes: a finite best scale
    cos = e @ _table(e, y).templates.T
    s = fit_scale(cos, y)
    grid = np.exp(np.linspace(np.log(0.5), np.log(1000), 2000))
    values = [nll(g, cos, y) for g in grid]
    assert 1 < s < 100 and nll(s, cos, y) <= min(values) + 1e-6
    assert nll(s, cos, y) <= min(nll(s * 0.9, cos, y), nll(s * 1.1, cos, y))


def test_threshold_accepts_at_most_the_target_share():
    scores = np.random.default_rng(2).uniform(-0.2, 0.9, 1000).astype(np.float32)
    for far in (0.0, 0.01, 0.05, 0.2):
        t = threshold_for(scores, far)
        assert np.mean(scores >= t) <= far
        assert np.mean(scores >= np.float32(t) - np.float32(1e-3)) > far or far == 0  # the lowest such threshold


def test_calibrate_table_threshold_and_false_reject_by_hand():
    rng = np.random.default_rng(3)
    e, y = _clusters(rng)
    table = _table(e, y)
    result = calibrate_table(table, e, [f"c{c}" for c in y], target_false_accept=0.1)
    cos, scored = leave_one_out(table, e, y)
    unknown = np.array([np.max(np.delete(table.cosines(e[i:i + 1])[0], y[i])) for i in range(len(e))])
    assert np.mean(unknown >= result.unknown_threshold) <= 0.1
    assert result.false_reject == pytest.approx(np.mean(cos[scored].max(axis=1) < result.unknown_threshold))
    assert result.scored == int(scored.sum()) and result.nll_after <= result.nll_before


def test_leave_one_out_refuses_images_that_were_not_taught():
    rng = np.random.default_rng(4)
    e, y = _clusters(rng)
    table = _table(e, y)
    keep = np.ones(len(y), bool)
    keep[np.flatnonzero(y == 2)[0]] = False  # class c2 (4 examples) given 3 of them
    with pytest.raises(CalibrationError, match="'c2': these 3 images are not the 4 examples"):
        calibrate_table(table, e[keep], y[keep])
    other = e[y == 3] + 0.01  # as many images as class c3 has, but others
    with pytest.raises(CalibrationError, match="'c3'"):
        calibrate_table(table, other, y[y == 3])


def test_calibrate_sets_the_model_scale_and_threshold_and_they_are_saved(tmp_path):
    rng = np.random.default_rng(5)
    e, y = _clusters(rng, per_class=(4,) * 6)
    model = create_head(12, None, [], scale=10.0)
    for c in range(6):
        model.add_class(f"c{c}", torch.from_numpy(e[y == c]))
    result = calibrate(model, torch.from_numpy(e), y)
    assert float(model.classes.scale[0]) == pytest.approx(result.scale, rel=1e-6)
    assert model.unknown_threshold == result.unknown_threshold
    p = model.predict_embeddings(torch.from_numpy(e[:1]), k=6)[0]
    logits = result.scale * model.classes.cosines(e[:1])[0]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert p.probabilities[0] == pytest.approx(expected.max(), rel=1e-5)
    checkpoint.save(model, tmp_path / "m.safetensors")
    back = checkpoint.load(tmp_path / "m.safetensors")
    assert float(back.classes.scale[0]) == pytest.approx(result.scale, rel=1e-6)
    assert back.unknown_threshold == result.unknown_threshold


def test_ece_by_hand():
    conf = np.array([0.95, 0.95, 0.55, 0.55, 0.15])
    correct = np.array([1, 0, 1, 1, 0])
    # bins (of 15): 0.95 -> |0.5 - 0.95| * 2; 0.55 -> |1 - 0.55| * 2; 0.15 -> |0 - 0.15|
    assert expected_calibration_error(conf, correct) == pytest.approx((0.9 + 0.9 + 0.15) / 5)


def test_create_from_folder_calibrates_and_calibrate_command(tmp_path, tiny_folder):
    # one image of another class's colour in each class: leave-one-out gets it wrong, so the
    # NLL has its minimum inside the bounds (separable classes would push the scale to 1000)
    for name, color in {"red": (20, 220, 20), "green": (20, 20, 220), "blue": (220, 20, 20)}.items():
        make_image(tiny_folder / name / "4.png", color, seed=9)
    path = tmp_path / "m.safetensors"
    r = run("create", path, "--backbone", "conv4", "--random-init", "--dim", "16", "--from-folder", tiny_folder,
            "--head", "normalized-mean")  # the default false-reject rate, 5 %, needs 19 examples: there are fewer
    assert r.exit_code == 0, r.output
    assert "no unknown threshold" in r.output and "too few" in r.output and "19" in r.output
    assert checkpoint.load(path).unknown_threshold is None
    r = run("create", path, "--backbone", "conv4", "--random-init", "--dim", "16", "--from-folder", tiny_folder,
            "--head", "normalized-mean", "--false-reject", "0.2", "--force")
    assert r.exit_code == 0, r.output
    assert "scale 10.00 ->" in r.output and "unknown below cosine" in r.output
    assert "false reject at most 20 % (guaranteed)" in r.output and "(estimated" in r.output
    # the photos of another class's colour are the only suspects, each named with its colour's class
    # (imprinting.suspects; a random conv4 is sure of some of them only)
    colour_of = {"red": "green", "green": "blue", "blue": "red"}  # what each class's 4.png shows
    suspects = [line for line in r.output.splitlines() if " looks like " in line]
    assert suspects, r.output
    for line in suspects:
        taught = line.split('taught as "')[1].split('"')[0]
        assert f"/{taught}/4.png looks like \"{colour_of[taught]}\"" in line, line
    model = checkpoint.load(path)
    assert model.unknown_threshold == pytest.approx(model.conformal.known[int(0.2 * (model.conformal.n + 1)) - 1])
    # the fitted scale, recomputed independently: each taught image embedded again, scored by
    # leave-one-out against normalized class means built here, and the mean NLL of the true
    # classes minimized over a fine grid of scales (the same bounds, 0.5 to 1000)
    classes = sorted(p.name for p in tiny_folder.iterdir())
    emb, labels = [], []
    for c, name in enumerate(classes):
        files = sorted((tiny_folder / name).glob("*.png"))
        emb.append(model.embed_images(files).numpy().astype(np.float64))
        labels += [c] * len(files)
    emb, labels = np.concatenate(emb), np.array(labels)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    means = np.stack([emb[labels == c].sum(0) for c in range(len(classes))])
    cos = np.empty((len(emb), len(classes)))
    for i, (x, c) in enumerate(zip(emb, labels)):
        for k in range(len(classes)):
            m = means[k] - x if k == c else means[k]  # its own class's mean without it
            cos[i, k] = x @ m / np.linalg.norm(m)
    grid = np.exp(np.linspace(np.log(0.5), np.log(1000.0), 40001))
    z = grid[:, None, None] * cos[None]
    zmax = z.max(axis=2, keepdims=True)
    nlls = np.mean(np.log(np.exp(z - zmax).sum(axis=2)) + zmax[..., 0] - z[:, np.arange(len(labels)), labels], axis=1)
    best = grid[np.argmin(nlls)]
    fitted = float(model.classes.scale[0])
    assert 1 < best < 900 and abs(np.log(fitted) - np.log(best)) < 2e-3, (fitted, best)
    r = run("create", tmp_path / "t.safetensors", "--backbone", "conv4", "--random-init", "--dim", "16",
            "--from-folder", tiny_folder, "--unknown-threshold", "0.3", "--head", "normalized-mean")
    assert r.exit_code == 0 and checkpoint.load(tmp_path / "t.safetensors").unknown_threshold == 0.3
    r = run("calibrate", path, tiny_folder)  # the taught images: leave-one-out, found automatically
    assert r.exit_code == 0 and "leave-one-out" in r.output, r.output
    assert float(checkpoint.load(path).classes.scale[0]) == pytest.approx(float(model.classes.scale[0]), rel=1e-3)
    r = run("calibrate", path, tiny_folder, "--method", "held-out", "--false-accept", "0.2")
    assert r.exit_code == 0 and "held-out" in r.output
    info = json.loads(run("info", path, "--json").output)
    assert info["unknown_threshold"] == pytest.approx(checkpoint.load(path).unknown_threshold)


def test_a_closed_form_head_gets_its_temperature_from_leave_one_out_over_its_own_rows():
    from imprinting import heads
    from imprinting.calibration import head_scores, nll

    rng = np.random.default_rng(6)
    e, y = _clusters(rng, per_class=(1, 4, 4, 5, 6, 6), spread=0.9)
    cov = np.cov(e.T) + 0.1 * np.eye(e.shape[1])
    head = heads.WhitenedHead(e.mean(axis=0), cov, 0.5, {1: 0.5, 4: 1.0})
    table = _table(e, y)
    table.set_head(head)
    got = head_scores(table, e, y, leave_out=True)
    for i in range(len(e)):  # by hand: the table rebuilt without example i, the same head
        keep = np.arange(len(e)) != i
        if (y[keep] == y[i]).sum() == 0:
            continue  # a one-example class has no row without it: its plain score is kept
        without = _table(e[keep], y[keep])
        without.set_head(head)
        want = without.logits(None, e[i : i + 1])[0]
        assert got[i, y[i]] == pytest.approx(want[list(without.names).index(f"c{y[i]}")], rel=1e-4, abs=1e-4)
    result = calibrate_table(table, e, y)
    assert result.scale_before == 1.0 and result.scored == len(e) - 1  # the one-example class is not scored
    scored = np.array([(y == c).sum() >= 2 for c in y])
    grid = np.exp(np.linspace(np.log(1e-3), np.log(100), 600))
    best = grid[np.argmin([nll(t, got[scored], y[scored]) for t in grid])]
    assert result.scale == pytest.approx(best, rel=0.03)
    assert result.nll_after <= result.nll_before + 1e-9
