"""``imprinting.sklearn.ImprintingClassifier``: scikit-learn's own estimator checks, imprinting
by hand (Qi, Brown & Lowe, CVPR 2018), exact incremental fitting, and the project's LAC
prediction sets (``imprinting.conformal``) against MAPIE's ``SplitConformalClassifier``."""

import math

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.estimator_checks import parametrize_with_checks

from imprinting.classes import ClassTable
from imprinting.conformal import ConformalScores, prediction_set
from imprinting.sklearn import ImprintingClassifier


@parametrize_with_checks([ImprintingClassifier()])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def _unit(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _blobs(rng, n_classes, per_class, dim=32, noise=0.6, centres=None):
    """Embeddings around random class centres on the unit sphere, labels ``'c00'``, ``'c01'``, ..."""
    centres = _unit(rng.standard_normal((n_classes, dim))) if centres is None else centres
    y = np.repeat(np.arange(n_classes), per_class)
    rng.shuffle(y)
    X = centres[y] + noise * rng.standard_normal((len(y), dim)) / math.sqrt(dim)
    X *= rng.uniform(0.5, 5.0, (len(y), 1))  # lengths do not matter: cosines
    return X, np.array([f"c{i:02d}" for i in y]), centres


# -- imprinting ---------------------------------------------------------------------------
def test_vectors_are_normalized_means_and_scores_are_scaled_cosines():
    rng = np.random.default_rng(0)
    X, y, _ = _blobs(rng, 3, 5, dim=8)
    clf = ImprintingClassifier(scale=7.0).fit(X, y)
    assert clf.classes_.tolist() == ["c00", "c01", "c02"] and clf.n_features_in_ == 8
    assert clf.table_.names == ("c00", "c01", "c02") and clf.table_.counts.tolist() == [5, 5, 5]
    e = _unit(X.astype(np.float32))
    w = np.stack([_unit(e[y == c].mean(axis=0)) for c in clf.classes_])
    np.testing.assert_allclose(clf.table_.templates, w, rtol=0, atol=1e-7)
    Xt = rng.standard_normal((10, 8))
    cos = _unit(Xt) @ w.T
    np.testing.assert_allclose(clf.decision_function(Xt), 7.0 * cos, rtol=0, atol=1e-5)
    p = np.exp(7.0 * cos) / np.exp(7.0 * cos).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(clf.predict_proba(Xt), p, rtol=0, atol=1e-6)
    assert clf.predict(Xt).tolist() == clf.classes_[np.argmax(cos, axis=1)].tolist()
    # the same cosines as the table's own (float32) product, to float32 precision
    np.testing.assert_allclose(clf.cosines(Xt), clf.table_.cosines(_unit(Xt).astype(np.float32)), atol=1e-6)


def test_binary_decision_is_the_log_odds_of_predict_proba():
    rng = np.random.default_rng(1)
    X, y, _ = _blobs(rng, 2, 6, dim=5)
    clf = ImprintingClassifier().fit(X, y)
    Xt = rng.standard_normal((20, 5))
    d, p = clf.decision_function(Xt), clf.predict_proba(Xt)
    assert d.shape == (20,)
    np.testing.assert_allclose(d, np.log(p[:, 1] / p[:, 0]), rtol=1e-9, atol=1e-9)
    assert clf.predict(Xt).tolist() == np.where(d > 0, clf.classes_[1], clf.classes_[0]).tolist()


def test_partial_fit_in_pieces_equals_fit_bit_for_bit():
    """Imprinting is a sum: the class sums after any split of the rows (in the same order),
    new classes arriving later included, are the same bits as fitting all at once."""
    rng = np.random.default_rng(2)
    X, y, _ = _blobs(rng, 5, 40, dim=16)
    y[:100] = np.where(y[:100] == "c04", "c03", y[:100])  # c04 first appears in the second half
    once = ImprintingClassifier().fit(X, y)
    for cuts in ([100], [1, 37, 150, 199], list(range(1, len(y)))):
        pieces = ImprintingClassifier()
        for part in np.split(np.arange(len(y)), cuts):
            pieces.partial_fit(X[part], y[part])
        assert pieces.classes_.tolist() == once.classes_.tolist() == ["c00", "c01", "c02", "c03", "c04"]
        np.testing.assert_array_equal(pieces.table_.sums, once.table_.sums)
        np.testing.assert_array_equal(pieces.table_.counts, once.table_.counts)
        np.testing.assert_array_equal(pieces.table_.weights, once.table_.weights)
        np.testing.assert_array_equal(pieces.predict_proba(X), once.predict_proba(X))
    # and the vectors are ClassTable.add_from_sum's bits for those sums
    table = ClassTable(16)
    for name, total, count in zip(once.table_.names, once.table_.sums, once.table_.counts):
        table.add_from_sum(name, total, count)
    np.testing.assert_array_equal(table.weights, once.table_.weights)


def test_fit_starts_over_and_partial_fit_adds_classes_in_sorted_place():
    rng = np.random.default_rng(3)
    X, y, _ = _blobs(rng, 3, 4, dim=6)
    clf = ImprintingClassifier().partial_fit(X, y)
    clf.partial_fit(X[:2], np.array(["a-new", "zz-new"]))
    assert clf.classes_.tolist() == ["a-new", "c00", "c01", "c02", "zz-new"]
    assert clf.table_.counts.tolist() == [1, 4, 4, 4, 1]
    assert clf.predict_proba(X).shape == (12, 5)
    clf.fit(X, y)
    assert clf.classes_.tolist() == ["c00", "c01", "c02"] and clf.table_.counts.sum() == 12


def test_labels_ints_or_strings_predict_returns_the_original_labels():
    rng = np.random.default_rng(4)
    X, y, _ = _blobs(rng, 3, 5, dim=6)
    ints = np.array([int(s[1:]) * 10 - 5 for s in y])  # -5, 5, 15
    clf = ImprintingClassifier().fit(X, ints)
    assert clf.classes_.tolist() == [-5, 5, 15] and clf.table_.names == ("-5", "5", "15")
    assert clf.predict(X).dtype == ints.dtype and set(clf.predict(X)) <= {-5, 5, 15}
    with pytest.raises(ValueError, match="Mix of label input types"):
        clf.partial_fit(X[:1], np.array(["c00"]))
    with pytest.raises(ValueError, match="not in classes"):
        ImprintingClassifier().partial_fit(X, ints, classes=[-5, 5])


def test_all_zero_rows_have_no_direction():
    """A zero row counts as its class's example but moves no vector; predicted, it has cosine 0
    with every class: uniform probabilities and the first class."""
    rng = np.random.default_rng(5)
    X, y, _ = _blobs(rng, 3, 4, dim=6)
    clf = ImprintingClassifier().fit(X, y)
    with_zero = ImprintingClassifier().fit(np.vstack([X, np.zeros((1, 6))]), np.append(y, "c01"))
    np.testing.assert_array_equal(with_zero.table_.sums, clf.table_.sums)
    assert with_zero.table_.counts.tolist() == [4, 5, 4]
    zero = np.zeros((2, 6))
    np.testing.assert_array_equal(clf.predict_proba(zero), np.full((2, 3), 1 / 3))
    assert clf.predict(zero).tolist() == ["c00", "c00"]
    only_zero = ImprintingClassifier().fit(np.vstack([X, np.zeros((2, 6))]), np.append(y, ["z", "z"]))
    np.testing.assert_array_equal(only_zero.cosines(X)[:, 3], 0.0)


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf"), "10", True])
def test_a_bad_scale_is_refused_at_fit(scale):
    X, y, _ = _blobs(np.random.default_rng(6), 2, 3, dim=4)
    clf = ImprintingClassifier(scale=scale)  # the constructor only stores it
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        clf.fit(X, y)


# -- conformal prediction sets against MAPIE ----------------------------------------------
def _mapie():
    return pytest.importorskip("mapie.classification", reason="mapie is a dev dependency (pip install -e '.[dev]')")


def _our_sets(p, q):
    """The project's sets as a boolean (N, C) matrix."""
    sets = np.zeros(p.shape, bool)
    for i, row in enumerate(p):
        sets[i, prediction_set(row, q)] = True
    return sets


def test_lac_prediction_sets_equal_mapie_split_conformal():
    """Fit on a train part, calibrate on a held-out part (nonconformity 1 - p(own class)), and
    the sets of test points from ``ConformalScores.set_threshold`` + ``prediction_set`` are
    MAPIE's (``conformity_score="lac"``, ``prefit=True``), q included, bit for bit.

    MAPIE's q is the same order statistic (the ceil((n + 1)(1 - alpha))-th smallest), but its
    set rule is ``(1 - p) - q <= 1e-8`` (``mapie._machine_precision.EPSILON``), ours ``1 - p <= q``:
    the sets are equal exactly when no test nonconformity lies in (q, q + 1e-8]; the test checks
    that condition holds here rather than assuming it (``test_mapie_includes_classes_within_1e_8``)."""
    classification = _mapie()
    rng = np.random.default_rng(7)
    X, y, centres = _blobs(rng, 10, 30, noise=2.0)
    X_cal, y_cal, _ = _blobs(rng, 10, 50, noise=2.0, centres=centres)
    X_test, y_test, _ = _blobs(rng, 10, 40, noise=2.0, centres=centres)
    clf = ImprintingClassifier().fit(X, y)
    for coverage in (0.9, 0.8, 0.95):
        own = np.searchsorted(clf.classes_, y_cal)
        nonconformity = 1.0 - clf.predict_proba(X_cal)[np.arange(len(y_cal)), own]
        q = ConformalScores(known=np.zeros(len(y_cal)), others=[], nonconformity=nonconformity).set_threshold(coverage)
        mapie = classification.SplitConformalClassifier(estimator=clf, confidence_level=coverage,
                                                        conformity_score="lac", prefit=True)
        labels, sets = mapie.conformalize(X_cal, y_cal).predict_set(X_test)
        assert mapie._mapie_classifier.quantiles_.tolist() == [q]  # private attribute: MAPIE's q
        p = clf.predict_proba(X_test)
        assert not np.any((1 - p > q) & (1 - p <= q + 1e-8))  # the condition for equal sets
        ours = _our_sets(p, q)
        assert sets.shape == (len(X_test), 10, 1)
        np.testing.assert_array_equal(sets[:, :, 0], ours)
        assert labels.tolist() == clf.predict(X_test).tolist()
        sizes = ours.sum(axis=1)
        assert (sizes == 1).any() and (sizes >= 2).any()  # not trivial sets: classes both in and out
        covered = ours[np.arange(len(y_test)), np.searchsorted(clf.classes_, y_test)].mean()
        assert covered >= coverage - 0.05, (coverage, covered)  # marginal coverage, roughly


class _GivenProbabilities(ClassifierMixin, BaseEstimator):
    """A prefit 'classifier' whose inputs are its probabilities: MAPIE's rule at chosen values."""

    def fit(self, X, y):
        self.classes_ = np.arange(np.asarray(X).shape[1])
        return self

    def predict_proba(self, X):
        return np.asarray(X, np.float64)

    def predict(self, X):
        return np.argmax(X, axis=1)


def test_mapie_includes_classes_within_1e_8_above_q_ours_does_not():
    """The one difference of the two rules: MAPIE's set keeps a class whose 1 - p exceeds q by at
    most 1e-8 (its EPSILON), the project's (``1 - p <= q``) does not."""
    classification = _mapie()
    rng = np.random.default_rng(8)
    n = 99
    nonconformity = rng.uniform(0.05, 0.9, n)
    y_cal = rng.integers(0, 3, n)
    P_cal = np.full((n, 3), 0.0)
    P_cal[np.arange(n), y_cal] = 1 - nonconformity
    P_cal[np.arange(n), (y_cal + 1) % 3] = nonconformity
    clf = _GivenProbabilities().fit(P_cal, y_cal)
    mapie = classification.SplitConformalClassifier(estimator=clf, confidence_level=0.9, prefit=True)
    mapie.conformalize(P_cal, y_cal)
    q = ConformalScores(known=np.zeros(n), others=[], nonconformity=nonconformity).set_threshold(0.9)
    assert q == np.sort(nonconformity)[89]  # k = ceil(100 * 0.9) = 90
    above = 1 - (q + 5e-9)  # p of class 0: its nonconformity is 5e-9 above q
    P_test = np.array([[above, 1 - above, 0.0], [1 - q, q, 0.0]])
    _, sets = mapie.predict_set(P_test)
    assert sets[:, 0, 0].tolist() == [True, True]
    assert _our_sets(P_test, q)[:, 0].tolist() == [False, True]


def test_mapie_quantile_is_the_same_order_statistic_and_needs_n_at_least_1_over_alpha():
    """MAPIE's q (``mapie.utils._compute_classification_quantile``: ``np.quantile(scores,
    ceil((n + 1)(1 - alpha)) / n, method="lower")``) is conformal.py's k-th smallest,
    k = ceil((n + 1) * coverage), for every n it accepts; it refuses n < max(1/alpha,
    1/(1 - alpha)) (``mapie.utils._check_alpha_and_n_samples``), where conformal.py still answers:
    q = the largest score while k <= n, else inf (every class)."""
    classification = _mapie()
    rng = np.random.default_rng(9)
    for coverage in (0.8, 0.9, 0.95):
        alpha = 1 - coverage
        smallest = math.ceil(round(max(1 / alpha, 1 / coverage), 9))
        for n in [smallest - 2, smallest - 1, *range(smallest, smallest + 25)]:
            nonconformity = rng.uniform(0.0, 1.0, n)
            y_cal = np.arange(n) % 2  # both labels, so MAPIE does not warn
            P_cal = np.zeros((n, 2))
            P_cal[np.arange(n), y_cal] = 1 - nonconformity
            P_cal[np.arange(n), 1 - y_cal] = nonconformity
            mapie = classification.SplitConformalClassifier(estimator=_GivenProbabilities().fit(P_cal, y_cal),
                                                            confidence_level=coverage, prefit=True)
            mapie.conformalize(P_cal, y_cal)
            q = ConformalScores(known=np.zeros(n), others=[], nonconformity=nonconformity).set_threshold(coverage)
            k = math.ceil((n + 1) * coverage)
            assert q == (math.inf if k > n else np.sort(nonconformity)[k - 1])
            if n < smallest:
                with pytest.raises(ValueError, match="Number of samples of the score is too low"):
                    mapie.predict_set(P_cal[:1])
            else:
                mapie.predict_set(P_cal[:1])
                assert mapie._mapie_classifier.quantiles_.tolist() == [q], (coverage, n)
