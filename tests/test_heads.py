"""The closed-form heads against direct computations (numpy), and the choice rule's contract."""

import numpy as np
import pytest

from imprinting import heads


def _gaussian_classes(rng, classes=12, per_class=30, d=6, spread=None):
    centres = rng.standard_normal((classes, d)) * 2
    shape = spread if spread is not None else np.diag(np.linspace(0.2, 3.0, d))
    x = np.concatenate([c + rng.standard_normal((per_class, d)) @ shape for c in centres])
    return x, np.repeat(np.arange(classes), per_class)


def test_feature_map_is_power_then_l2_then_centre():
    x = np.array([[4.0, 0.0, 9.0], [1.0, 1.0, -2.0]])
    centre = np.array([0.1, 0.2, 0.3])
    want = np.sqrt(np.maximum(x, 0))
    want = want / np.linalg.norm(want, axis=1, keepdims=True) - centre
    np.testing.assert_allclose(heads.FeatureMap(0.5, centre)(x), want, atol=1e-12)


def test_scatter_and_means_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 2.0], [0.0, 0.0], [0.0, 4.0], [5.0, 5.0]])
    y = np.array([0, 0, 1, 1, 2])
    scatter, dof = heads.within_class_scatter(x, y)
    want = np.array([[2.0, 0.0], [0.0, 0.0]]) + np.array([[0.0, 0.0], [0.0, 8.0]])
    np.testing.assert_allclose(scatter, want)
    assert dof == 2
    means, counts = heads.class_means(x, y, 4)
    np.testing.assert_allclose(means, [[2, 2], [0, 2], [5, 5], [0, 0]])
    assert counts.tolist() == [2, 2, 1, 0]


def test_whitened_scores_equal_the_shot_corrected_discriminant():
    rng = np.random.default_rng(0)
    s = np.cov(rng.standard_normal((50, 4)), rowvar=False)
    head = heads.WhitenedMeans(s, shrinkage=0.3, correction=0.6)
    shrunk = 0.7 * s + 0.3 * np.trace(s) / 4 * np.eye(4)
    p = np.linalg.inv(shrunk)
    means, counts = rng.standard_normal((3, 4)), np.array([1, 5, 20])
    x = rng.standard_normal((7, 4))
    excess = np.trace(p @ s)
    want = np.array([[m @ p @ q - 0.5 * (m @ p @ m - 0.6 * excess / n) for m, n in zip(means, counts)] for q in x])
    np.testing.assert_allclose(head.scores(x, means, counts), want, atol=1e-10)
    assert abs(head.excess - excess) < 1e-9


def test_correction_by_shot_count_takes_the_largest_simulated_count_not_above():
    head = heads.WhitenedMeans(np.eye(2), 0.5, {1: 0.25, 5: 1.0, 10: 0.5})
    assert head.strength(np.array([1, 2, 4, 5, 9, 10, 50])).tolist() == [0.25, 0.25, 0.25, 1.0, 1.0, 0.5, 0.5]


def test_whitening_beats_plain_means_on_anisotropic_gaussians():
    """With one stretched direction the shared covariance matters: whitened means classify
    held-out points better than nearest (Euclidean) means."""
    rng = np.random.default_rng(1)
    spread = np.diag([0.1, 0.1, 0.1, 0.1, 0.1, 4.0])
    x, y = _gaussian_classes(rng, spread=spread)
    test, ty = _gaussian_classes(np.random.default_rng(1), spread=spread)  # same centres
    test = test + np.random.default_rng(2).standard_normal(test.shape) @ spread
    scatter, dof = heads.within_class_scatter(x, y)
    means, counts = heads.class_means(x, y, 12)
    white = heads.WhitenedMeans(scatter / dof, 0.1, 0.0).scores(test, means, counts).argmax(1)
    plain = (-((test[:, None, :] - means[None]) ** 2).sum(-1)).argmax(1)
    assert (white == ty).mean() > (plain == ty).mean() + 0.1


def test_choose_is_deterministic_and_picks_from_the_grid():
    rng = np.random.default_rng(3)
    x, y = _gaussian_classes(rng, classes=10, per_class=20)
    a1, c1, grid = heads.choose(x, y, shots=(1, 5), episodes=1, seed=0, shrinkages=(0.5, 0.9), corrections=(0.5, 1.0))
    a2, c2, _ = heads.choose(x, y, shots=(1, 5), episodes=1, seed=0, shrinkages=(0.5, 0.9), corrections=(0.5, 1.0))
    assert (a1, c1) == (a2, c2) and a1 in (0.5, 0.9) and set(c1) == {1, 5} and set(c1.values()) <= {0.5, 1.0}
    best = {n: max((0.5, 1.0), key=lambda c: (grid[(a1, c, n)], -c)) for n in (1, 5)}
    assert c1 == best and len(grid) == 2 * 2 * 2


def test_the_protocol_method_scores_as_the_head_computed_by_hand():
    """``methods.WhitenedMeans`` on the synthetic low-shot data: its scores equal the head
    built by hand from the base features (power 0.5, L2, centred), with the given options."""
    import torch

    from experiments_fixtures import tiny_lowshot
    from imprinting import protocol
    from imprinting.methods import WhitenedMeans

    data = tiny_lowshot()
    (ep,) = protocol.episodes(data, shots=(2,), draws=1)
    result = WhitenedMeans(shrinkage=0.6, correction=0.5).fit(data, ep)
    base = data.base_train_idx.numpy()
    raw = data.train_feats.numpy()
    unit = np.sqrt(raw) / np.linalg.norm(np.sqrt(raw), axis=1, keepdims=True)
    centre = unit[base].mean(0)
    x = unit - centre
    idx = np.concatenate([base, ep.shots.numpy()])
    y = data.train_y.numpy()[idx]
    # the covariance of every example the episode knows, around its class mean, by hand
    means, counts = heads.class_means(x[idx], y, len(data.order))
    resid = x[idx] - means[y]
    dof = len(idx) - len(np.unique(y))
    base_dof = len(base) - len(np.unique(data.train_y.numpy()[base]))
    q = np.sqrt(data.test_feats.numpy())
    q = q / np.linalg.norm(q, axis=1, keepdims=True) - centre
    want = heads.WhitenedMeans(resid.T @ resid / dof, 0.6 * base_dof / dof, 0.5).scores(q, means, counts)
    got = result.scorer(data.test_feats)
    assert isinstance(got, torch.Tensor) and got.shape == (len(q), len(data.order))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-3)
    assert result.info == {"shrinkage": pytest.approx(0.6 * base_dof / dof), "correction": 0.5}
    assert dof > base_dof  # two shots per novel class add to the covariance
