"""The peers of benchmarks/compare.py: what a user would pick instead of imprinting, each as
a method of the library's contract (``fit(data, episode) -> FitResult``) so that the same
protocol runs and times them. Each reports ``info["nbytes"]``: the bytes of the arrays it
keeps to predict (weights, or stored examples, plus any feature transform it needs).

scikit-learn (Pedregosa et al., JMLR 2011): LogisticRegression, k-NN; FAISS (Johnson et al.,
"Billion-scale similarity search with GPUs", 2017): exact inner-product search; easyfsl
(Bennequin, 2021): SimpleShot (Wang et al., 2019), Prototypical Networks (Snell et al.,
NeurIPS 2017) and its Finetune classifier.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from imprinting.methods import FitResult, Method
from imprinting.protocol import Episode, LowShotData


def available(module: str) -> str | None:
    """The version of an optional package, or None when it does not import."""
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "unknown")
    except Exception:
        return None


def base_plus_novel(data: LowShotData, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features and labels of every base training image plus the episode's shots."""
    idx = torch.cat([data.base_train_idx, episode.shots])
    return data.train_feats[idx], data.train_y[idx]


class SklearnLogReg(Method):
    """StandardScaler + LogisticRegression (lbfgs, multinomial) retrained on base + novel."""

    family = "scikit-learn"

    def __init__(self, class_weight: str | None = "balanced", C: float = 1.0, max_iter: int = 500):
        self.class_weight, self.C, self.max_iter = class_weight, C, max_iter
        self.name = "LogisticRegression" + (" (balanced)" if class_weight == "balanced" else "")

    def fit(self, data, episode):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x, y = base_plus_novel(data, episode)
        x = x.numpy()
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight, solver="lbfgs")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(scaler.transform(x), y.numpy())
        if not np.array_equal(clf.classes_, np.arange(len(data.order))):
            raise RuntimeError("LogisticRegression did not see every class")

        def scorer(feats):
            return torch.from_numpy(clf.decision_function(scaler.transform(feats.numpy())))

        nbytes = clf.coef_.nbytes + clf.intercept_.nbytes + scaler.mean_.nbytes + scaler.scale_.nbytes
        iters = int(clf.n_iter_.max())
        return FitResult(scorer, info={"nbytes": nbytes, "n_iter": iters, "converged": bool(iters < self.max_iter)})


class SklearnKNN(Method):
    """Cosine k-NN over every stored base + novel example (brute force), votes weighted by
    1 / distance (with uniform votes, ties at n = 1 go to the lowest class index: base)."""

    family = "scikit-learn"

    def __init__(self, k: int):
        self.k = k
        self.name = f"k-NN cosine, k={k} (scikit-learn)"

    def fit(self, data, episode):
        from sklearn.neighbors import KNeighborsClassifier

        x, y = base_plus_novel(data, episode)
        knn = KNeighborsClassifier(n_neighbors=self.k, metric="cosine", algorithm="brute", weights="distance")
        knn.fit(x.numpy(), y.numpy())
        if not np.array_equal(knn.classes_, np.arange(len(data.order))):
            raise RuntimeError("k-NN did not see every class")

        def scorer(feats):
            return torch.from_numpy(knn.predict_proba(feats.numpy()))

        return FitResult(scorer, info={"nbytes": knn._fit_X.nbytes + knn._y.nbytes})


class FaissFlat(Method):
    """``faiss.IndexFlatIP`` over L2-normalized base + novel features (exact cosine search);
    the k neighbours vote with weight 1 / (1 - cosine), as scikit-learn's distance weights."""

    family = "faiss"

    def __init__(self, k: int):
        self.k = k
        self.name = f"FAISS IndexFlatIP, k={k}"

    def fit(self, data, episode):
        import faiss

        x, y = base_plus_novel(data, episode)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(np.ascontiguousarray(F.normalize(x, dim=1).numpy(), dtype=np.float32))
        labels = y.numpy().astype(np.int64)
        num_classes, k = len(data.order), self.k

        def scorer(feats):
            q = np.ascontiguousarray(F.normalize(feats, dim=1).numpy(), dtype=np.float32)
            sim, nn = index.search(q, k)
            weight = 1.0 / np.maximum(1.0 - sim.astype(np.float64), 1e-12)
            scores = np.zeros((len(q), num_classes))
            np.add.at(scores, (np.arange(len(q))[:, None], labels[nn]), weight)
            return torch.from_numpy(scores)

        return FitResult(scorer, info={"nbytes": index.ntotal * index.d * 4 + labels.nbytes})


class EasyFSL(Method):
    """easyfsl's few-shot classifiers on the features (backbone = identity), support set =
    every base training image + the novel shots, so that they predict among all classes.

    SimpleShot and Finetune use SimpleShot's best feature transform "CL2N" (centred on the
    base training mean of ``data``, L2-normalized; computing the mean is base setup);
    PrototypicalNetworks uses the raw features and euclidean distance, as in its paper.
    easyfsl's Finetune fine-tunes the prototypes inside ``forward`` (on every call); here it
    runs once, at fit time, on an empty query batch, and prediction is the cosine to the tuned
    prototypes, which is what its ``forward`` returns.
    """

    family = "easyfsl"

    def __init__(self, kind: str, data: LowShotData | None = None, **kwargs):
        self.kind = kind
        self.kwargs = kwargs
        self.cl2n = kind in ("SimpleShot", "Finetune")
        self.center = data.train_feats[data.base_train_idx].mean(0) if self.cl2n else None
        self.name = f"easyfsl {kind}" + (" (CL2N)" if self.cl2n else "")

    def fit(self, data, episode):
        import easyfsl.methods as em

        x, y = base_plus_novel(data, episode)
        opts = {"feature_centering": self.center, "feature_normalization": 2} if self.cl2n else {}
        model = getattr(em, self.kind)(**opts, **self.kwargs)
        model.process_support_set(x, y)
        if self.kind == "Finetune":
            model(x[:0])  # fine-tunes the prototypes (easyfsl does it in forward)
            model.prototypes = model.prototypes.detach()
            scorer = lambda feats: model.cosine_distance_to_prototypes(model.compute_features(feats))  # noqa: E731
        else:
            scorer = model
        nbytes = model.prototypes.numel() * model.prototypes.element_size()
        if self.center is not None:
            nbytes += self.center.numel() * self.center.element_size()
        support = model.support_features.numel() * model.support_features.element_size() + model.support_labels.numel() * 8
        return FitResult(scorer, info={"nbytes": nbytes, "easyfsl_also_keeps_support_bytes": int(support)})
