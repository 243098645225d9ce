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


def test_base_recall_is_leave_one_out_top1_by_hand():
    """Each base row against its own class's mean without it (n - 1 examples, their shot
    correction) and every other class's full mean, by explicit loops."""
    rng = np.random.default_rng(5)
    x, y = _gaussian_classes(rng, classes=5, per_class=6, d=4)
    taught = np.concatenate([x[:1] + 0.5, x[12:14] - 0.3])  # a one-shot and a two-shot class
    ty = np.array([5, 6, 6])
    means, counts = heads.class_means(np.concatenate([x, taught]), np.concatenate([y, ty]), 7)
    scatter, dof = heads.within_class_scatter(x, y)
    head = heads.WhitenedMeans(scatter / dof, 0.4, 0.0)
    got = heads.base_recall(head, x, y, means, counts, corrections=(0.0, 0.5, 1.0))
    for c in (0.0, 0.5, 1.0):
        right = []
        for i in range(len(x)):
            m, n = means.copy(), counts.copy()
            others = [j for j in range(len(x)) if y[j] == y[i] and j != i]
            m[y[i]], n[y[i]] = x[others].mean(0), len(others)
            right.append(heads.WhitenedMeans(scatter / dof, 0.4, c).scores(x[i : i + 1], m, n).argmax() == y[i])
        assert got[c] == pytest.approx(np.mean(right))
    assert len(set(got.values())) > 1  # the correction matters here: the test is not vacuous


def test_novel_recall_counts_the_fake_novel_queries_right_on_the_rules_episodes():
    rng = np.random.default_rng(6)
    x, y = _gaussian_classes(rng, classes=10, per_class=12, d=4)
    got = heads.novel_recall(x, y, 0.5, shots=(1, 2), episodes=1, seed=0, corrections=(0.5, 1.0))
    assert set(got) == {(0.5, 1), (1.0, 1), (0.5, 2), (1.0, 2)}
    for ep in heads.simulated_episodes(x, y, (1, 2), 1, 0):
        scatter, dof = heads.within_class_scatter(x[ep.fit_base], ep.labels[ep.fit_base])
        truth = ep.labels[ep.query]
        novel = truth >= ep.num_base
        for c in (0.5, 1.0):
            head = heads.WhitenedMeans(scatter / dof, 0.5, c)
            want = (head.scores(x[ep.query][novel], ep.means, ep.counts).argmax(1) == truth[novel]).mean()
            assert got[(c, ep.n)] == pytest.approx(want)


def test_episode_correction_maximizes_the_mean_of_both_recalls():
    recall = {(0.5, 1): 0.2, (1.0, 1): 0.6, (0.5, 5): 0.5, (1.0, 5): 0.75}
    base = {0.5: 0.9, 1.0: 0.4}
    assert heads.episode_correction(recall, base, 1) == 0.5  # (0.2 + 0.9) > (0.6 + 0.4)
    assert heads.episode_correction(recall, {0.5: 0.9, 1.0: 0.8}, 1) == 1.0  # 1.1 < 1.4
    assert heads.episode_correction(recall, base, 20) == 0.5  # counts above 5 use 5's: 1.4 > 1.15
    assert heads.episode_correction(recall, {0.5: 0.5, 1.0: 0.25}, 5) == 0.5  # a tie (1.0 each): the smaller


def test_the_protocol_method_chooses_its_correction_per_episode_by_the_rule(monkeypatch):
    """With no correction given, ``methods.WhitenedMeans`` hands ``episode_correction`` the
    simulated novel recall and the base rows' recall against the episode (computed here by
    hand from the same functions, which the tests above check against loops), and scores with
    the correction it returns (a spy returns 0.55, a value no grid holds)."""
    from experiments_fixtures import tiny_lowshot
    from imprinting import protocol
    from imprinting.methods import WhitenedMeans

    data = tiny_lowshot()
    (ep,) = protocol.episodes(data, shots=(1,), draws=1)
    calls = []
    monkeypatch.setattr(heads, "episode_correction", lambda recall, base, n: calls.append((recall, base, n)) or 0.55)
    result = WhitenedMeans(shrinkage=0.6).fit(data, ep)
    base = data.base_train_idx.numpy()
    raw = data.train_feats.numpy()
    fmap = heads.FeatureMap(0.5, heads.FeatureMap(0.5)(raw[base]).mean(0))
    x = fmap(raw)
    idx = np.concatenate([base, ep.shots.numpy()])
    y = data.train_y.numpy()[idx]
    extra, extra_dof = heads.within_class_scatter(x[ep.shots.numpy()], y[len(base):])
    scatter, dof = heads.within_class_scatter(x[base], y[: len(base)])
    cov, shrink = (scatter + extra) / (dof + extra_dof), 0.6 * dof / (dof + extra_dof)
    means, counts = heads.class_means(x[idx], y, len(data.order))
    (recall, base_got, n), = calls
    assert n == 1 and recall == heads.novel_recall(x[base], data.train_y.numpy()[base], 0.6)
    assert base_got == heads.base_recall(heads.WhitenedMeans(cov, shrink, 0.0), x[base], y[: len(base)], means, counts)
    assert result.info["correction"] == 0.55
    q = fmap(data.test_feats.numpy())
    want = heads.WhitenedMeans(cov, shrink, 0.55).scores(q, means, counts)
    np.testing.assert_allclose(result.scorer(data.test_feats).numpy(), want, rtol=1e-4, atol=1e-3)


def test_base_recall_without_a_class_of_two_rows_leaves_the_choice_to_novel_recall():
    x = np.eye(3)
    means, counts = heads.class_means(x, np.arange(3), 3)
    got = heads.base_recall(heads.WhitenedMeans(np.eye(3), 0.5, 0.0), x, np.arange(3), means, counts, (0.5, 1.0))
    assert got == {0.5: 0.0, 1.0: 0.0}
    assert heads.episode_correction({(0.5, 1): 0.2, (1.0, 1): 0.6}, got, 1) == 1.0
