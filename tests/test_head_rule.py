"""The correction rule shipped with the product's head (``imprinting.heads.rule``): a class
table's choice equals the protocol's per-episode rule computed by hand on the same rows, follows
the classes as they change exactly as one batch computation would, and names a damaged rule (the files: tests/test_head_product.py)."""

from __future__ import annotations

import numpy as np
import pytest

from imprinting import heads
from imprinting.classes import ClassTable
from imprinting.heads.rule import RuleState, TaughtSetRule, reference_sample


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _data(seed=0, classes=12, per_class=10, dim=16):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) * np.linspace(0.1, 1.2, dim)[:, None]
    means = rng.normal(size=(classes, dim)) * 0.5
    x = np.concatenate([means[c] + rng.normal(size=(per_class, dim)) @ mix for c in range(classes)])
    z = _unit(np.sign(x) * np.sqrt(np.abs(_unit(x)))).astype(np.float32).astype(np.float64)
    return _unit(z), np.repeat(np.arange(classes), per_class)


def _rule_head(z, y, base, shrinkage=0.7, recall=None):
    """A head fitted on the rows of the ``base`` classes, its reference every such row."""
    rows = np.isin(y, base)
    centre = z[rows].mean(axis=0)
    scatter, dof = heads.within_class_scatter(z[rows] - centre, y[rows])
    if recall is None:  # a made-up novel recall: rising with the correction, falling with n
        recall = {(c, n): 0.3 * c / n + 0.01 * n for c in heads.EPISODE_CORRECTIONS for n in (1, 2, 5)}
    rule = TaughtSetRule(z[rows], [f"c{v}" for v in y[rows]], recall)
    return heads.WhitenedHead(centre, scatter / dof, shrinkage, 0.0, rule=rule), centre, scatter / dof


def test_the_tables_choice_is_the_protocols_rule_by_hand():
    z, y = _data()
    base, novel = list(range(7)), list(range(7, 12))
    head, centre, cov = _rule_head(z, y, base)
    table = ClassTable(z.shape[1], head=head)
    held = {}
    for c in base:
        held[c] = z[y == c]
    for c, n in zip(novel, (1, 1, 2, 2, 5)):
        held[c] = z[y == c][:n]
    for c, rows in held.items():
        table.add(f"c{c}", rows)
    # the protocol's rule on the same rows: heads.base_recall + heads.episode_correction
    means = np.stack([held[c].mean(axis=0) for c in held]) - centre
    counts = np.array([len(held[c]) for c in held])
    plain = heads.WhitenedMeans(cov, 0.7, 0.0)
    rows = np.isin(y, base)
    base_recall = heads.base_recall(plain, z[rows] - centre, y[rows], means, counts)
    want = {n: heads.episode_correction(head.rule.recall, base_recall, n) for n in (1, 2, 5, 10)}
    assert table.head_info()["correction"] == {str(n): want[n] for n in (1, 2, 5, 10)}
    assert len(set(want.values())) > 1  # the made-up recall makes the shot counts differ
    # the scores: the whitened discriminant with each class at its shot count's correction
    q = z[::7].astype(np.float32)
    for i, c in enumerate(held):
        plain.correction = want[int(counts[i])]
        w, b = plain.weights(means[i:i + 1], counts[i:i + 1])
        np.testing.assert_allclose(table.logits(None, q)[:, i], ((q - centre) @ w.T + b)[:, 0], rtol=1e-4, atol=1e-4)


def test_the_choice_follows_the_classes_as_one_batch_computation_would():
    z, y = _data(seed=1)
    head, _, _ = _rule_head(z, y, list(range(6)))
    t = ClassTable(z.shape[1], head=head)
    for c in range(6):
        t.add(f"c{c}", z[y == c])
    t.add_vector("template", _unit(np.ones((1, z.shape[1])))[0])
    states = []
    for c in range(6, 12):  # one-shot classes, one at a time (the O(R D) update)
        t.add(f"c{c}", z[y == c][:1])
        states.append(t.head_info()["correction"])
    t.extend("c7", z[y == 7][1:3])
    snap = t.snapshot("c2")
    t.remove("c2")  # a reference class goes: its rows no longer count
    t.remove("c9")
    t.restore(snap)
    t.remove("c4")
    t.add("c4", z[y == 4][:3])  # a reference class comes back with other examples
    batch = ClassTable.from_arrays(t.names, t.weights, t.sums, t.counts, t.scale, head=head)
    q = z[::5].astype(np.float32)
    assert t.head_info() == batch.head_info()
    np.testing.assert_array_equal(t.logits(None, q), batch.logits(None, q))
    np.testing.assert_array_equal(t.head_rows()[1], batch.head_rows()[1])
    # every step of the one-shot additions against a batch table of the classes held then
    names = [f"c{c}" for c in range(6)] + ["template"]
    for c, seen in zip(range(6, 12), states):
        names.append(f"c{c}")
        ref = ClassTable(z.shape[1], head=head)
        for name in names:
            if name == "template":
                ref.add_vector(name, _unit(np.ones((1, z.shape[1])))[0])
            else:
                k = int(name[1:])
                ref.add(name, z[y == k] if k < 6 else z[y == k][:1])
        assert ref.head_info()["correction"] == seen


def test_a_reference_row_counts_only_while_its_class_has_two_examples():
    z, y = _data(seed=2)
    head, _, _ = _rule_head(z, y, [0, 1, 2])
    t = ClassTable(z.shape[1], head=head)
    t.add("c0", z[y == 0])
    t.add("c1", z[y == 1][:1])  # one example: nothing to leave one out of
    t.add("c5", z[y == 5][:1])
    state = RuleState(head, t.names, t.sums, t.counts, *[t._rows[k].view for k in ("head_ref", "head_lift")])
    assert state.keep.sum() == 10 and (np.array(head.rule.labels)[state.keep] == "c0").all()
    t.remove("c0")
    t.add("c4", z[y == 4][:1])
    # no kept row: the base recall is 0 everywhere and the novel recall alone decides (ties: smaller)
    recall = head.rule.recall
    assert t.head_info()["correction"] == {"1": max(heads.EPISODE_CORRECTIONS, key=lambda c: (recall[(c, 1)], -c))}


def test_the_reference_sample_shares_rows_among_classes_with_two():
    y = np.array([0] * 50 + [1] * 3 + [2] + [3] * 10)
    picked = reference_sample(y, limit=12, seed=0)
    assert len(picked) == 12 and len(set(picked)) == 12
    counts = np.bincount(y[picked], minlength=4)  # rounds of one row a class: 3 + 3 + 3 + 2 + 1
    assert counts[2] == 0 and counts[1] == 3 and sorted(counts[[0, 3]]) == [4, 5]
    assert len(reference_sample(y, limit=1000)) == len(y) - 1  # all but the class of one row


def test_a_damaged_rule_is_named():
    z, y = _data(dim=8)
    head, _, _ = _rule_head(z, y, [0, 1, 2])
    header, arrays = head.header(), head.arrays()
    header["rule"]["recall"]["1"] = header["rule"]["recall"]["1"][:3]
    with pytest.raises(ValueError, match="novel recall"):
        heads.WhitenedHead.from_parts(header, arrays)
    with pytest.raises(ValueError, match="damaged head"):
        heads.WhitenedHead.from_parts(head.header(), {k: v for k, v in arrays.items() if k != "reference"})
    for bad in (float("nan"), 10 ** 400):  # what a hand-edited JSON header can hold
        header = head.header()
        header["rule"]["corrections"][0] = bad
        with pytest.raises(ValueError, match="finite|damaged"):
            heads.WhitenedHead.from_parts(header, arrays)


def test_restoring_a_class_with_another_sum_recomputes_its_rows():
    """What a replica does when another one changed a class (``Service._set_state``): the
    class's snapshot with the new sum and count put back in its place."""
    from imprinting.classes import ClassSnapshot

    z, y = _data(seed=4)
    head, _, _ = _rule_head(z, y, list(range(6)))
    t = ClassTable(z.shape[1], head=head)
    for c in range(9):
        t.add(f"c{c}", z[y == c][: 10 if c < 6 else 1])
    scratch = ClassTable(z.shape[1])
    scratch.add("c7", z[y == 7])  # c7 now has all ten examples
    t.restore(ClassSnapshot("c7", t.index_of("c7"), {**t.snapshot("c7").fields, **scratch.snapshot("c7").fields}))
    batch = ClassTable.from_arrays(t.names, t.weights, t.sums, t.counts, t.scale, head=head)
    assert t.counts[t.index_of("c7")] == 10 and t.head_info() == batch.head_info()
    q = z[::4].astype(np.float32)
    np.testing.assert_array_equal(t.logits(None, q), batch.logits(None, q))


def test_leave_one_out_scores_an_example_by_its_class_without_it_at_that_count():
    from imprinting.calibration import head_scores

    z, y = _data(seed=5)
    head, centre, cov = _rule_head(z, y, list(range(6)))
    t = ClassTable(z.shape[1], head=head)
    for c in range(8):
        t.add(f"c{c}", z[y == c][: 10 if c < 6 else 3])
    e, labels = z[y == 6][:3].astype(np.float32), np.full(3, 6)
    got = head_scores(t, e, labels, leave_out=True)
    state = t._head_state
    c2 = head.rule.choose(state.base_recall(), 2)  # the class has 2 examples without the one scored
    plain = heads.WhitenedMeans(cov, head.shrinkage, c2)
    for i in range(3):
        rest = np.delete(z[y == 6][:3], i, axis=0)
        w, b = plain.weights(rest.mean(axis=0, keepdims=True) - centre, np.array([2]))
        assert got[i, 6] == pytest.approx(float((e[i] - centre) @ w[0] + b[0]), rel=1e-4, abs=1e-4)
    np.testing.assert_allclose(np.delete(got, 6, axis=1), np.delete(head_scores(t, e, labels, False), 6, axis=1))
