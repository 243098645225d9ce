"""Imprinted weights as a scikit-learn classifier over embeddings (numpy and scikit-learn only).

``ImprintingClassifier`` is the classifier of Qi, Brown & Lowe, "Low-Shot Learning with
Imprinted Weights" (CVPR 2018), on embeddings that are already computed (any backbone's, or
none: any real feature vectors). Each class's weight is the re-normalized sum (equivalently, mean)
of its examples' L2-normalized embeddings (paper Sec. 3.2), and an input scores
``s * cos(w_c, x)`` with every class (Sec. 3.1), ``s`` the ``scale``. The classes live in an
``imprinting.classes.ClassTable`` (``table_``), so the vectors are the bits the rest of the
project imprints, the logits are ``ClassTable.logits`` of the cosines, and the table can be saved
like any other (the cosines are a float64 product: ``ImprintingClassifier.cosines`` says why).
It needs scikit-learn >= 1.6 (``validate_data``, ``__sklearn_tags__``) and passes its
``check_estimator`` with default tags: dense input only, no NaN, no sample weights.

Why an estimator: scikit-learn's model selection and conformal libraries (MAPIE) take a
classifier with ``fit`` / ``predict_proba``; ``tests/test_sklearn.py`` checks the project's
LAC prediction sets (``imprinting.conformal``) against MAPIE's through this class.

Imprinting is exactly incremental: ``partial_fit`` adds each example's normalized embedding to
its class's float64 running sum, in the order the examples arrive (``np.add.accumulate`` from the
stored sum: a left fold by definition), so fitting in several calls gives the same sums, bit for
bit, as one call with the same rows in the same order, and therefore the same vectors.

An all-zero row has no direction: ``normalize_rows`` leaves it zero (as ``ClassTable`` does), so
in ``fit`` it counts as an example of its class but moves no vector, and at prediction it has
cosine 0 with every class: uniform probabilities, and the first class of ``classes_`` (argmax
ties go to the first). A class taught only zero rows has a zero vector and scores 0 with every
input. scikit-learn's ``check_estimator`` feeds such rows (small integer data), so they are
accepted rather than refused.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from imprinting.calibration import softmax
from imprinting.classes import ClassTable
from imprinting.rows import normalize_rows


class ImprintingClassifier(ClassifierMixin, BaseEstimator):
    """Imprinted-weights classifier: one normalized-mean vector per class, ``s * cos`` logits.

    Parameters
    ----------
    scale : float, default=10.0
        The scale ``s`` multiplying the cosines (Qi et al. 2018, Sec. 3.1): ``predict_proba`` is
        ``softmax(s * cos)``. It changes the probabilities, never the predicted class. Read at
        each ``fit`` / ``partial_fit`` (the table keeps the value it was built with).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels seen so far, sorted (``np.unique`` order, as scikit-learn and MAPIE expect:
        column j of ``predict_proba`` is ``classes_[j]``).
    n_features_in_ : int
        The embedding size.
    table_ : imprinting.classes.ClassTable
        The classes, named ``str(label)``, in ``classes_`` order: sums, counts, vectors, scale.
    """

    def __init__(self, scale: float = 10.0):
        self.scale = scale

    # -- teaching --------------------------------------------------------------------------
    def fit(self, X, y):
        """Imprint one class per label of ``y`` from the rows of ``X`` (embeddings), anew."""
        for attr in ("classes_", "table_", "n_features_in_", "feature_names_in_"):
            self.__dict__.pop(attr, None)
        return self._teach(X, y, classes=None, first=True)

    def partial_fit(self, X, y, classes=None):
        """Add these examples to their classes: existing classes take them into their sums, new
        labels become new classes (``classes_`` grows, stays sorted).

        ``classes`` is accepted for scikit-learn's incremental API: when given, every label of
        ``y`` must be one of them. Imprinting needs an example to make a class's vector, so a
        listed class joins ``classes_`` only with its first example.
        """
        return self._teach(X, y, classes=classes, first=not hasattr(self, "table_"))

    def _teach(self, X, y, classes, first: bool):
        self._check_scale()
        X, y = validate_data(self, X, y, reset=first, dtype=[np.float64, np.float32])
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if classes is not None:
            allowed = np.asarray(classes)
            outside = np.setdiff1d(np.unique(y), allowed)
            if len(outside):
                raise ValueError(f"labels {outside.tolist()!r} are not in classes={allowed.tolist()!r}")
        old = None if first else self.classes_
        labels = unique_labels(y) if old is None else unique_labels(old, y)  # refuses mixed str/number
        dim = X.shape[1]
        sums = np.zeros((len(labels), dim), np.float64)
        counts = np.zeros(len(labels), np.int64)
        if old is not None:
            at = np.searchsorted(labels, old)
            sums[at], counts[at] = self.table_.sums, self.table_.counts
        # as ClassTable._summed: float32 embeddings, normalized in float64
        e = normalize_rows(np.asarray(X, np.float32).astype(np.float64))
        for label in np.unique(y):
            i = int(np.searchsorted(labels, label))
            rows = e[y == label]  # arrival order
            sums[i] = np.add.accumulate(np.vstack([sums[i][None], rows]), axis=0)[-1]
            counts[i] += len(rows)
        scale = np.array([self.scale], np.float32)
        # a class's vector is normalize(sum) in float32, one row at a time: ClassTable.add_from_sum's bits
        weights = np.stack([normalize_rows(row) for row in sums]).astype(np.float32)
        table = ClassTable.from_arrays([str(c) for c in labels], weights, sums, counts, scale,
                                       initial_scale=float(self.scale))
        table.templates  # noqa: B018  (computed now: predicting never writes, so a read-only copy works)
        self.table_ = table
        self.classes_ = labels
        return self

    def _check_scale(self) -> None:
        s = self.scale
        if isinstance(s, bool) or not isinstance(s, Real) or not math.isfinite(s) or s <= 0:
            raise ValueError(f"scale must be a positive finite number, got {s!r}")

    # -- predicting ------------------------------------------------------------------------
    def cosines(self, X) -> np.ndarray:
        """(N, C) cosines of the rows of ``X`` with the class vectors, in float64.

        The table's float32 templates, multiplied in float64 rather than by
        ``ClassTable.cosines`` (a float32 product): BLAS rounds a float32 product differently
        for different batch sizes (about 1e-7), and scikit-learn requires a row's scores not to
        depend on the rows predicted with it (``check_methods_subset_invariance``). They agree
        with ``ClassTable.cosines`` to float32 precision.
        """
        check_is_fitted(self, "table_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        e = normalize_rows(np.asarray(X, np.float64))
        return e @ self.table_.templates.T.astype(np.float64)

    def _logits(self, X) -> np.ndarray:
        """(N, C) ``s * cos`` in float64 (``ClassTable.logits``: the table's scale)."""
        cos = self.cosines(X)  # checks that it is fitted first
        return np.asarray(self.table_.logits(cos), np.float64)

    def decision_function(self, X):
        """The logits ``s * cos(w_c, x)`` (N, C), the scores ``predict_proba`` softmaxes.

        Logits rather than cosines so that, with two classes, the returned (N,) score
        ``s * (cos_1 - cos_0)`` is exactly the log-odds ``log(p_1 / p_0)`` of ``predict_proba``
        (scikit-learn's binary convention: positive means ``classes_[1]``). Divide by ``scale``
        for cosines.
        """
        z = self._logits(X)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X):
        """``softmax(s * cos)`` over ``classes_`` (N, C), float64."""
        return softmax(self._logits(X))

    def predict(self, X):
        """The label of the highest cosine (ties: the first in ``classes_``)."""
        z = self._logits(X)
        return self.classes_[np.argmax(z, axis=1)]

    def __sklearn_tags__(self):
        """scikit-learn's defaults, stated: dense embeddings only, and no NaN (a NaN has no cosine)."""
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        return tags
