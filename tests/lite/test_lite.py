"""The lite runtime: imprinting and prediction against PyTorch and numpy reference formulas."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from imprinting.lite import ExportFormatError, LiteModel, UnknownClassError, load


def _unit(rng, n, d):
    e = rng.standard_normal((n, d)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _reference_weight(embeddings_list):
    """normalize(sum_i normalize(e_i)) in float64, written out independently."""
    e = np.concatenate(embeddings_list).astype(np.float64)
    s = (e / np.linalg.norm(e, axis=1, keepdims=True)).sum(axis=0)
    return s, (s / np.linalg.norm(s)).astype(np.float32)


def test_imprint_matches_pytorch_and_the_formula(conv4_model, conv4_export):
    """Same embeddings in, same sums, counts and class vectors out, one call or several."""
    lite = load(conv4_export)
    model = copy.deepcopy(conv4_model)
    rng = np.random.default_rng(0)
    e1, e2, e3 = _unit(rng, 3, 32), _unit(rng, 2, 32) * 3.0, _unit(rng, 4, 32)  # e2 not unit length
    lite.imprint_embeddings("cat", e1)
    lite.imprint_embeddings("cat", e2)  # examples added later
    lite.imprint_embeddings("dog", e3)
    model.add_class("cat", torch.from_numpy(e1))
    model.add_examples("cat", torch.from_numpy(e2))
    model.add_class("dog", torch.from_numpy(e3))
    assert lite.class_names == model.class_names == ["base_a", "base_b", "blue", "cat", "dog"]
    np.testing.assert_array_equal(lite.counts, model.classes.counts)
    np.testing.assert_allclose(lite.sums, model.classes.sums, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lite.weights, model.classifier.weight.detach().numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(lite.scale, model.classifier.scale.detach().numpy(), rtol=1e-6)
    for index, parts in ((3, [e1, e2]), (4, [e3])):
        s, w = _reference_weight(parts)
        np.testing.assert_allclose(lite.sums[index], s, rtol=0, atol=1e-12)
        np.testing.assert_allclose(lite.weights[index], w, rtol=0, atol=1e-7)
    # one call with all the examples gives the incremental result
    once = load(conv4_export)
    once.imprint_embeddings("cat", np.concatenate([e1, e2]))
    np.testing.assert_allclose(once.sums[3], lite.sums[3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(once.weights[3], lite.weights[3], rtol=0, atol=1e-7)


def test_imprint_from_images_matches_pytorch(effnet_model, effnet_export, tiny_images):
    lite = load(effnet_export)
    model = copy.deepcopy(effnet_model)
    files = tiny_images["blue"]
    lite.imprint("blue", files[:2])
    lite.imprint("blue", files[2:3])
    lite.imprint("red", tiny_images["red"][3:4])  # more examples for an imprinted class
    model.imprint("blue", files[:2])
    model.imprint("blue", files[2:3])
    model.imprint("red", tiny_images["red"][3:4])
    assert lite.class_names == model.class_names == ["red", "green", "blue"]
    np.testing.assert_array_equal(lite.counts, [4, 3, 3])
    np.testing.assert_array_equal(lite.counts, model.classes.counts)
    np.testing.assert_allclose(lite.sums, model.classes.sums, rtol=0, atol=1e-5)
    np.testing.assert_allclose(lite.weights, model.classifier.weight.detach().numpy(), rtol=0, atol=1e-5)


def test_predict_matches_pytorch(effnet_model, effnet_export, tiny_images):
    lite = load(effnet_export)
    files = [p for group in tiny_images.values() for p in group[3:]]
    emb = lite.embed(files)
    got = lite.predict_embeddings(emb, k=5)
    want = effnet_model.predict_embeddings(torch.from_numpy(emb), k=5)
    for g, w in zip(got, want):
        assert g.classes == w.classes and g.unknown == w.unknown
        np.testing.assert_allclose(g.probabilities, w.probabilities, atol=1e-6)
        np.testing.assert_allclose(g.cosines, w.cosines, atol=1e-6)
    # from the files: the same answers (embeddings agree to 1e-4)
    assert [p.classes for p in lite.predict(files, k=2)] == [p.classes for p in effnet_model.predict_images(files, k=2)]


def test_predict_reference_formula_and_unknown_threshold(conv4_export):
    lite = load(conv4_export)
    rng = np.random.default_rng(1)
    emb = _unit(rng, 6, 32)
    w = lite.weights / np.linalg.norm(lite.weights, axis=1, keepdims=True)
    cos = emb.astype(np.float64) @ w.T.astype(np.float64)
    logits = cos * lite.scale
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    preds = lite.predict_embeddings(emb, k=10)
    for row, pred in enumerate(preds):
        order = np.argsort(-p[row])
        assert pred.classes == [lite.class_names[i] for i in order]  # k capped at 3 classes
        np.testing.assert_allclose(pred.probabilities, p[row][order], atol=1e-6)
        np.testing.assert_allclose(pred.cosines, cos[row][order], atol=1e-6)
        assert pred.top == pred.classes[0] and not pred.unknown  # no threshold stored
    best = cos.max(axis=1)
    threshold = float(np.median(best))
    flags = [q.unknown for q in lite.predict_embeddings(emb, k=1, unknown_threshold=threshold)]
    assert flags == list(best < threshold) and any(flags) and not all(flags)
    lite.unknown_threshold = 2.0
    assert all(q.unknown for q in lite.predict_embeddings(emb, k=1))


def test_per_class_scale_of_a_new_class_is_the_mean(conv4_export):
    lite = load(conv4_export)
    assert lite.per_class_scale and lite.scale.tolist() == [8.0, 12.0, 10.0]
    lite.imprint_embeddings("new", _unit(np.random.default_rng(2), 1, 32))
    assert lite.scale.tolist() == [8.0, 12.0, 10.0, 10.0]


def test_base_classes_are_protected_and_errors_are_clear(conv4_export):
    lite = load(conv4_export)
    e = _unit(np.random.default_rng(3), 2, 32)
    with pytest.raises(ValueError, match="'base_a' is a trained base class"):
        lite.imprint_embeddings("base_a", e)
    with pytest.raises(ValueError, match="base class and cannot be removed"):
        lite.remove_class("base_b")
    with pytest.raises(UnknownClassError, match="unknown class 'nope'"):
        lite.remove_class("nope")
    with pytest.raises(ValueError, match="empty"):
        lite.imprint_embeddings("  ", e)
    with pytest.raises(ValueError, match=r"shape \(n >= 1, 32\)"):
        lite.imprint_embeddings("x", np.zeros((2, 31), np.float32))
    with pytest.raises(ValueError, match="no images"):
        lite.embed([])
    with pytest.raises(ValueError, match="expected preprocessed images"):
        lite.embed_array(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(ValueError, match="no such image"):
        lite.imprint("cat", ["/nonexistent/cat.jpg"])
    assert lite.num_classes == 3  # nothing changed by the failures


def test_remove_class_and_many_classes(conv4_export):
    lite = load(conv4_export)
    rng = np.random.default_rng(4)
    for i in range(40):  # past the initial buffer capacity
        lite.imprint_embeddings(f"c{i}", _unit(rng, 1, 32))
    assert lite.num_classes == 43 and lite.scale.shape == (43,)
    keep = lite.weights[5].copy()
    lite.remove_class("c1")
    assert lite.num_classes == 42 and "c1" not in lite.class_names and lite.index_of("c2") == 4
    np.testing.assert_array_equal(lite.weights[4], keep)
    assert lite.sums.shape == (42, 32) and lite.counts.shape == (42,) and lite.scale.shape == (42,)


def test_save_and_reload(conv4_export, tmp_path, tiny_images):
    lite = load(conv4_export)
    lite.imprint("red ✓", tiny_images["red"][:2])
    path = lite.save(tmp_path / "mine.npz")
    again = LiteModel(conv4_export, classes=path)
    assert again.class_names == lite.class_names
    for name in ("weights", "sums", "counts", "scale"):
        np.testing.assert_array_equal(getattr(again, name), getattr(lite, name))
    assert "4 classes (2 imprinted)" in repr(again)


def test_classes_from_another_embedder_are_refused(conv4_export, effnet_export):
    with pytest.raises(ExportFormatError, match="32-d classes for a 1280-d embedder"):
        LiteModel(effnet_export, classes=conv4_export / "classes.npz")
