"""The class table against hand-computed references, and the torch model's mirror of it."""

import numpy as np
import pytest
import torch

from imprinting.build import create_head
from imprinting.classes import ClassTable
from imprinting.errors import ClassError, UnknownClassError


def _unit(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _emb(rng, n, d=4):
    return rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.1, 10, (n, 1)).astype(np.float32)


def test_add_extend_sum_count_and_template_by_hand():
    rng = np.random.default_rng(0)
    t = ClassTable(4)
    a, b = _emb(rng, 3), _emb(rng, 2)
    assert t.add("cat", a) == 0 and t.add("dog", b) == 1
    more = _emb(rng, 4)
    t.extend("cat", more)
    want_sum = _unit(np.concatenate([a, more])).sum(0)
    np.testing.assert_allclose(t.sums[0], want_sum, rtol=0, atol=1e-12)
    np.testing.assert_allclose(t.weights[0], _unit(want_sum), rtol=0, atol=1e-7)
    np.testing.assert_allclose(t.templates, _unit(t.weights), rtol=0, atol=1e-7)
    assert t.counts.tolist() == [7, 2] and t.names == ("cat", "dog") and t.count("dog") == 2


def test_extend_in_steps_equals_one_batch_bit_for_bit_in_float32():
    rng = np.random.default_rng(1)
    e = _emb(rng, 9, 8)
    one, steps = ClassTable(8), ClassTable(8)
    one.add("x", e)
    steps.add("x", e[:2])
    for row in e[2:]:
        steps.extend("x", row[None])
    np.testing.assert_array_equal(one.weights, steps.weights)
    np.testing.assert_allclose(one.sums, steps.sums, rtol=0, atol=1e-13)


def test_other_classes_keep_every_bit():
    rng = np.random.default_rng(2)
    t = ClassTable(4)
    t.add_vector("base", np.array([0.5, -2.0, 1.0, 3.0], np.float32))
    t.add("a", _emb(rng, 2))
    before = t.weights.copy(), t.templates.copy()
    t.add("b", _emb(rng, 3))
    t.extend("b", _emb(rng, 1))
    np.testing.assert_array_equal(t.weights[:2], before[0])
    np.testing.assert_array_equal(t.templates[:2], before[1])


def test_base_classes_take_no_examples_and_cannot_be_removed():
    t = ClassTable(3)
    t.add_vector("base", np.ones(3, np.float32))
    with pytest.raises(ClassError, match="base class"):
        t.extend("base", np.ones((1, 3)))
    with pytest.raises(ClassError, match="cannot be removed"):
        t.remove("base")
    with pytest.raises(ClassError, match="already exists"):
        t.add("base", np.ones((1, 3)))
    with pytest.raises(UnknownClassError, match="unknown class 'nope'"):
        t.index_of("nope")
    with pytest.raises(ClassError, match="shape"):
        t.add("bad", np.ones((2, 5)))
    with pytest.raises(ClassError, match="NaN"):
        t.add("nan", np.array([[np.nan, 0, 1]]))
    with pytest.raises(ClassError, match="empty"):
        t.add("  ", np.ones((1, 3)))


def test_remove_moves_later_rows_up_and_restore_puts_a_class_back_in_place():
    rng = np.random.default_rng(3)
    t = ClassTable(4, per_class_scale=True, initial_scale=7.0)
    for name in "abcd":
        t.add(name, _emb(rng, 2))
    rows = {k: getattr(t, k).copy() for k in ("weights", "templates", "sums", "counts", "scale")}
    snap = t.snapshot("b")
    t.remove("b")
    assert t.names == ("a", "c", "d") and t.index_of("c") == 1
    np.testing.assert_array_equal(t.sums, rows["sums"][[0, 2, 3]])
    t.restore(snap)
    assert t.names == ("a", "b", "c", "d")
    for k, v in rows.items():
        np.testing.assert_array_equal(getattr(t, k), v)
    t.extend("b", _emb(rng, 3))  # an existing class restores in place
    t.restore(snap)
    np.testing.assert_array_equal(t.sums, rows["sums"])


def test_new_per_class_scale_is_the_mean_of_the_others():
    t = ClassTable(2, per_class_scale=True, initial_scale=4.0)
    t.add("a", np.ones((1, 2)))
    assert t.scale.tolist() == [4.0]
    t.set_vectors(t.weights, np.array([2.0], np.float32))
    t.add("b", np.ones((1, 2)))
    t.set_vectors(t.weights, np.array([2.0, 5.0], np.float32))
    t.add("c", np.ones((1, 2)))
    assert t.scale.tolist() == [2.0, 5.0, 3.5]


def test_add_from_sum_gives_the_bits_of_imprinting_the_examples():
    rng = np.random.default_rng(4)
    e = _emb(rng, 5)
    a, b = ClassTable(4), ClassTable(4)
    a.add("x", e)
    b.add_from_sum("x", a.sums[0].copy(), 5)
    np.testing.assert_array_equal(a.weights, b.weights)
    with pytest.raises(ClassError, match="at least one example"):
        b.add_from_sum("y", np.zeros(4), 0)


def test_views_are_read_only_and_100000_appends_reallocate_logarithmically():
    t = ClassTable(2)
    t.add("a", np.ones((1, 2)))
    with pytest.raises(ValueError, match="read-only"):
        t.sums[0, 0] = 5.0
    buffers = set()
    for i in range(100_000):
        t.add_vector(f"c{i}", np.array([1.0, i], np.float32))
        buffers.add(t.weight_buffer().ctypes.data)
    assert len(t) == 100_001 and t.weights[-1].tolist() == [1.0, 99_999.0]
    assert len(buffers) <= 14  # 16, 32, ..., 131072: doubling, not a copy per class


def test_cosines_and_logits_by_hand():
    rng = np.random.default_rng(5)
    t = ClassTable(4, initial_scale=3.0)
    for n in "abc":
        t.add(n, _emb(rng, 2))
    q = _unit(rng.standard_normal((2, 4))).astype(np.float32)
    want = q.astype(np.float64) @ _unit(t.weights).T
    np.testing.assert_allclose(t.cosines(q), want, atol=1e-6)
    np.testing.assert_allclose(t.logits(t.cosines(q)), 3.0 * want, atol=1e-5)


# -- the torch model mirrors the table -------------------------------------------------
def test_training_writes_the_table_and_its_templates_follow():
    model = create_head(6, None, ["a", "b"])
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # an optimizer step, in place
    np.testing.assert_array_equal(model.classes.weights, model.classifier.weight.detach().numpy())
    np.testing.assert_allclose(model.classes.templates, _unit(model.classifier.weight.detach().numpy()), atol=1e-7)


def test_trained_rows_survive_adding_classes_and_replacing_the_tensor():
    model = create_head(4, None, ["a", "b"])
    with torch.no_grad():
        model.classifier.weight.mul_(3.0)
    trained = model.classifier.weight.detach().clone()
    model.add_class("c", torch.randn(2, 4))
    assert torch.equal(model.classifier.weight[:2].detach(), trained)
    model.classifier.weight.data = torch.ones(3, 4)  # a caller replacing the tensor outright
    model.add_class("d", torch.zeros(1, 4) + 1)
    assert torch.equal(model.classifier.weight[:3].detach(), torch.ones(3, 4))
    assert model.classes.weights[:3].tolist() == [[1.0] * 4] * 3


def test_a_copy_and_a_state_dict_load_keep_table_and_parameters_in_step():
    import copy

    model = create_head(4, None, ["a"])
    model.add_class("b", torch.randn(3, 4))
    twin = copy.deepcopy(model)
    twin.add_examples("b", torch.randn(2, 4))
    assert model.classes.count("b") == 3 and twin.classes.count("b") == 5
    np.testing.assert_array_equal(twin.classes.weights, twin.classifier.weight.detach().numpy())
    other = create_head(4, None, ["a", "b"])
    other.load_state_dict(twin.state_dict())
    np.testing.assert_array_equal(other.classes.weights, twin.classes.weights)
