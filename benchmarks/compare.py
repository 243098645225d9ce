"""Imprinting against the alternatives a user would pick, side by side, in one run.

On the same cached EfficientNet-Lite0 features of CUB and Flowers-102 (the paper's base /
novel split, ``imprinting.reproduce.prepare(..., augment=2)``), for n = 1, 5, 20 novel
examples per class and several seeded draws (the draws of ``imprint reproduce tables``),
every method is measured for:

- novel top-1: test images of the novel classes, predicted among all classes;
- all-class top-1: every test image (base + novel), among all classes;
- time to add the novel classes: wall time to go from the base model to a classifier that
  includes the novel classes. The backbone forward passes are the same for every method
  and are excluded (features are cached). Imprinting: from the novel backbone features
  (FC embedding of the shots + imprinting); LogisticRegression: standardizing + retraining
  on base + novel features; k-NN / FAISS: building the index over base + novel examples;
  easyfsl: ``process_support_set`` on base + novel (+ Finetune's prototype fine-tuning);
  last-layer fine-tuning: its training. Work that needs only the base data (training the
  base model, the base feature mean) is timed once and reported as "base setup";
- time to predict the test set from its backbone features;
- memory held by the classifier: bytes of the arrays it keeps to predict (weights, or
  stored examples, plus any feature transform it needs).

Timing: one thread everywhere (``torch.set_num_threads(1)``, BLAS / OpenMP via
threadpoolctl, ``faiss.omp_set_num_threads(1)``), because the 2-core machine is shared.
Fast operations are repeated (at least ~0.3 s in all, at most 7 times) and the fastest is
kept; slow ones run once. The tables give the median of that over the draws.

Usage (one command, writes results/benchmarks.md's comparison section, results/benchmarks_compare.csv/.json
and results/benchmarks_accuracy_vs_time.png)::

    .venv/bin/python benchmarks/compare.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from imprinting import protocol
from imprinting.methods import Finetune, Imprinting, Method, RawFeatureNCM
from imprinting.protocol import Episode, LowShotData
from imprinting.train import TrainConfig

# --------------------------------------------------------------------------------------
# Our best configuration: the one the protocol issue settled on (`imprint reproduce beyond`,
# results/<dataset>/beyond.md): ``imprinting.reproduce.best_method``. To benchmark another,
# change these lines. ``make(data, base, seed)`` gets the data, the trained paper base model
# (FC 64 + cosine classifier) and the seed, and returns a Method; its construction (here:
# training its own 512-d base model) is timed as base setup.
from imprinting.reproduce import BEST_NAME, best_method  # noqa: E402

OURS_BEST_NAME = f"Ours best: {BEST_NAME.removeprefix('Best: ')}"
OURS_BEST_MAKE: Callable[[LowShotData, object, int], Method] = lambda data, base, seed: best_method(data, seed)  # noqa: E731
# The simplest strong configuration, one line of the library (no base training at all):
OURS_NCM_NAME = "Ours: RawFeatureNCM (power 0.5, centered)"
OURS_NCM_MAKE: Callable[[LowShotData, object, int], Method] = lambda data, base, seed: RawFeatureNCM(center=True, power=0.5)  # noqa: E731
# --------------------------------------------------------------------------------------

REFERENCE = "Imprinting (paper: FC 64 + cosine)"  # ratios in the tables are to this row
DATASETS = ("cub", "flowers102")


@dataclass
class Fitted:
    """A classifier that includes the novel classes: a scorer and what it keeps to predict."""

    scorer: Callable[[torch.Tensor], torch.Tensor]  # backbone features (M, F) -> scores (M, C), data.order
    nbytes: int
    info: dict | None = None


class Contender:
    """One method in the comparison: ``setup`` does the base-only work once (timed as base
    setup), ``add`` builds a classifier with the novel classes of one episode (timed)."""

    name = "contender"
    family = ""
    uses_base_model = False  # needs the trained base model (its training is part of base setup)

    def setup(self, data: LowShotData, base) -> None:
        pass

    def add(self, data: LowShotData, episode: Episode) -> Fitted:
        raise NotImplementedError


def held_bytes(obj) -> int:
    """Bytes of every tensor / array reachable from a scorer: closure cells, modules'
    parameters and buffers, containers, captured Method objects. The data set is skipped."""
    total, seen, stack = 0, set(), [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen or o is None or isinstance(o, LowShotData):
            continue
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            total += o.numel() * o.element_size()
        elif isinstance(o, np.ndarray):
            total += o.nbytes
        elif isinstance(o, torch.nn.Module):
            stack.extend(o.state_dict(keep_vars=True).values())
        elif isinstance(o, types.FunctionType):
            stack.extend(c.cell_contents for c in (o.__closure__ or ()) if _cell_full(c))
        elif isinstance(o, types.MethodType):
            stack += [o.__func__, o.__self__]
        elif isinstance(o, (list, tuple, set)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, Method):
            stack.extend(vars(o).values())
    return total


def _cell_full(cell) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


def base_plus_novel(data: LowShotData, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features and labels of every base training image plus the episode's shots."""
    idx = torch.cat([data.base_train_idx, episode.shots])
    return data.train_feats[idx], data.train_y[idx]


# ---- ours -----------------------------------------------------------------------------
class LibraryMethod(Contender):
    """A method of this library (``imprinting.methods``), its ``fit`` timed as is."""

    family = "ours"

    def __init__(self, name: str, make: Callable[[LowShotData, object], Method], uses_base_model: bool = True,
                 family: str = "ours"):
        self.name = name
        self.make = make
        self.uses_base_model = uses_base_model
        self.family = family

    def setup(self, data, base):
        self.method = self.make(data, base)

    def add(self, data, episode):
        scorer = self.method.fit(data, episode)
        return Fitted(scorer, held_bytes(scorer))


def ours(cfg: TrainConfig) -> list[Contender]:
    """The paper's configuration (the reference of every ratio), our best, and the plain
    raw-feature class means; the last two do not use the paper's base model."""
    return [
        LibraryMethod(REFERENCE, lambda data, base: Imprinting(base)),
        LibraryMethod(OURS_BEST_NAME, lambda data, base: OURS_BEST_MAKE(data, base, cfg.seed), uses_base_model=False),
        LibraryMethod(OURS_NCM_NAME, lambda data, base: OURS_NCM_MAKE(data, base, cfg.seed), uses_base_model=False),
    ]


# ---- scikit-learn -----------------------------------------------------------------------
class SklearnLogReg(Contender):
    """StandardScaler + LogisticRegression (lbfgs, multinomial) retrained on base + novel."""

    family = "scikit-learn"

    def __init__(self, class_weight: str | None = "balanced", C: float = 1.0, max_iter: int = 500):
        self.class_weight, self.C, self.max_iter = class_weight, C, max_iter
        self.name = "LogisticRegression" + (" (balanced)" if class_weight == "balanced" else "")

    def add(self, data, episode):
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
        return Fitted(scorer, nbytes, {"n_iter": int(clf.n_iter_.max()), "converged": bool(clf.n_iter_.max() < self.max_iter)})


class SklearnKNN(Contender):
    """Cosine k-NN over every stored base + novel example (brute force), votes weighted by
    1 / distance (with uniform votes, ties at n = 1 go to the lowest class index: base)."""

    family = "scikit-learn"

    def __init__(self, k: int):
        self.k = k
        self.name = f"k-NN cosine, k={k} (scikit-learn)"

    def add(self, data, episode):
        from sklearn.neighbors import KNeighborsClassifier

        x, y = base_plus_novel(data, episode)
        knn = KNeighborsClassifier(n_neighbors=self.k, metric="cosine", algorithm="brute", weights="distance")
        knn.fit(x.numpy(), y.numpy())
        if not np.array_equal(knn.classes_, np.arange(len(data.order))):
            raise RuntimeError("k-NN did not see every class")

        def scorer(feats):
            return torch.from_numpy(knn.predict_proba(feats.numpy()))

        return Fitted(scorer, knn._fit_X.nbytes + knn._y.nbytes)


# ---- FAISS --------------------------------------------------------------------------------
class FaissFlat(Contender):
    """``faiss.IndexFlatIP`` over L2-normalized base + novel features (exact cosine search);
    the k neighbours vote with weight 1 / (1 - cosine), as scikit-learn's distance weights."""

    family = "faiss"

    def __init__(self, k: int):
        self.k = k
        self.name = f"FAISS IndexFlatIP, k={k}"

    def add(self, data, episode):
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

        return Fitted(scorer, index.ntotal * index.d * 4 + labels.nbytes)


# ---- easyfsl ------------------------------------------------------------------------------
class EasyFSL(Contender):
    """easyfsl's few-shot classifiers on the features (backbone = identity), support set =
    every base training image + the novel shots, so that they predict among all classes.

    SimpleShot and Finetune use SimpleShot's best feature transform "CL2N" (centred on the
    base training mean, L2-normalized; the mean is base setup); PrototypicalNetworks uses
    the raw features and euclidean distance, as in its paper. easyfsl's Finetune fine-tunes
    the prototypes inside ``forward`` (on every call); here it runs once, at add time, on an
    empty query batch, and prediction is the cosine to the tuned prototypes, which is what
    its ``forward`` returns.
    """

    family = "easyfsl"

    def __init__(self, kind: str, **kwargs):
        self.kind = kind
        self.kwargs = kwargs
        self.cl2n = kind in ("SimpleShot", "Finetune")
        self.name = f"easyfsl {kind}" + (" (CL2N)" if self.cl2n else "")

    def setup(self, data, base):
        self.center = data.train_feats[data.base_train_idx].mean(0) if self.cl2n else None

    def add(self, data, episode):
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
        return Fitted(scorer, nbytes, {"easyfsl_also_keeps_support_bytes": int(support)})


# ---- fine-tuning the last layer -----------------------------------------------------------
def last_layer_finetuning(cfg: TrainConfig) -> list[Contender]:
    """The library's fine-tuning on cached features (FC layer + classifier + scale train,
    the backbone is frozen): from random novel weights (what a user without imprinting
    does) and from imprinted ones (Imprinting+FT)."""
    return [
        LibraryMethod("Fine-tune last layers, random init (Rand+FT)",
                      lambda data, base: Finetune(base, "random", cfg, record_history=False), family="fine-tuning"),
        LibraryMethod("Fine-tune last layers, imprinted init (Imprinting+FT)",
                      lambda data, base: Finetune(base, "imprint", cfg, record_history=False), family="fine-tuning"),
    ]


def available(module: str) -> str | None:
    """The version of an optional package, or None when it does not import."""
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "unknown")
    except Exception:
        return None


def contenders(cfg: TrainConfig, finetune_steps: int = 200) -> list[Contender]:
    out = ours(cfg) + [SklearnLogReg("balanced"), SklearnLogReg(None), SklearnKNN(1), SklearnKNN(3)]
    if available("faiss"):
        out += [FaissFlat(1), FaissFlat(3)]
    if available("easyfsl"):
        out += [EasyFSL("SimpleShot"), EasyFSL("PrototypicalNetworks"),
                EasyFSL("Finetune", fine_tuning_steps=finetune_steps)]
    return out + last_layer_finetuning(cfg)


# ---- the run -------------------------------------------------------------------------------
def timed(fn, min_seconds: float = 0.3, max_repeats: int = 7):
    """(result of the last call, fastest wall seconds): fast calls are repeated and the
    minimum is kept, the usual estimate of the cost itself on a machine that other jobs
    slow down now and then."""
    times, result = [], None
    while True:
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        if sum(times) >= min_seconds or len(times) >= max_repeats:
            return result, min(times)


def limit_threads():
    """One thread for torch, BLAS/OpenMP and FAISS; returns the threadpoolctl context."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass
    return threadpool_limits(1)


def compare(data: LowShotData, methods: list[Contender], eps: list[Episode], dim: int = 64,
            cfg: TrainConfig | None = None, progress: bool = True, min_seconds: float = 0.3) -> list[dict]:
    """Every contender on every episode; one row per (method, n, draw)."""
    cfg = cfg or TrainConfig(epochs=20)
    torch.manual_seed(cfg.seed)  # the base model's initial weights
    t0 = time.perf_counter()
    base, _ = protocol.train_base(data, dim, cfg)
    base_seconds = time.perf_counter() - t0
    rows = []
    for m in methods:
        t0 = time.perf_counter()
        m.setup(data, base)
        setup = time.perf_counter() - t0 + (base_seconds if m.uses_base_model else 0.0)
        for ep in eps:
            fitted, add_s = timed(lambda: m.add(data, ep), min_seconds)
            with torch.no_grad():
                scores, pred_s = timed(lambda: fitted.scorer(data.test_feats), min_seconds)
            acc = protocol.accuracies(torch.as_tensor(scores).float(), data)
            rows.append({"dataset": data.name, "method": m.name, "family": m.family, "n": ep.n, "draw": ep.draw,
                         "novel": acc["novel"], "all": acc["all"], "add_s": add_s, "predict_s": pred_s,
                         "bytes": int(fitted.nbytes), "setup_s": setup, "test_images": len(data.test_feats),
                         **(fitted.info or {})})
            if progress:
                print(f"  {data.name:10s} {m.name:55s} n={ep.n:2d} draw={ep.draw} novel {acc['novel']:5.1f} "
                      f"all {acc['all']:5.1f} add {add_s * 1e3:9.2f} ms predict {pred_s * 1e3:8.2f} ms "
                      f"{fitted.nbytes / 1024:9.1f} KiB", flush=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (dataset, method, n): mean and std over draws of the accuracies, medians of the
    times, mean bytes; ratios to the reference (Imprinting) at the same dataset and n."""
    out = []
    keys = list(dict.fromkeys((r["dataset"], r["method"], r["n"]) for r in rows))
    for ds, method, n in keys:
        rs = [r for r in rows if (r["dataset"], r["method"], r["n"]) == (ds, method, n)]
        s = {"dataset": ds, "method": method, "family": rs[0]["family"], "n": n, "draws": len(rs)}
        for metric in ("novel", "all"):
            v = [r[metric] for r in rs]
            s[f"{metric}_mean"], s[f"{metric}_std"] = float(np.mean(v)), float(np.std(v))
        s["add_s"] = float(np.median([r["add_s"] for r in rs]))
        s["predict_s"] = float(np.median([r["predict_s"] for r in rs]))
        s["bytes"] = int(np.mean([r["bytes"] for r in rs]))
        s["setup_s"] = float(rs[0]["setup_s"])
        s["test_images"] = rs[0]["test_images"]
        out.append(s)
    for s in out:
        ref = next((r for r in out if (r["dataset"], r["method"], r["n"]) == (s["dataset"], REFERENCE, s["n"])), None)
        if ref is None:
            continue
        s["novel_delta"] = s["novel_mean"] - ref["novel_mean"]
        s["all_delta"] = s["all_mean"] - ref["all_mean"]
        for key in ("add_s", "predict_s", "bytes"):
            s[f"{key}_ratio"] = s[key] / ref[key] if ref[key] else float("nan")
    return out


# ---- reporting -----------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def _x(ratio: float) -> str:
    if ratio != ratio:
        return ""
    return f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.1f}×" if ratio >= 1 else f"{ratio:.2f}×"


def _kib(nbytes: int) -> str:
    return f"{nbytes / 1024:,.0f}" if nbytes >= 10 * 1024 else f"{nbytes / 1024:.1f}"


_NUMERIC = re.compile(r"^[-+*]*[\d,.]+\**( ± [\d.]+)?( \([-+][\d.]+\))?(×|%)?$|^$")


def _table(header: list[str], lines: list[list[str]]) -> str:
    """A Markdown table; columns whose cells are all numbers are right-aligned."""
    numeric = [all(_NUMERIC.match(line[i]) for line in lines) for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def accuracy_table(summary: list[dict], dataset: str, shots: list[int]) -> str:
    methods = list(dict.fromkeys(s["method"] for s in summary if s["dataset"] == dataset))
    get = {(s["method"], s["n"]): s for s in summary if s["dataset"] == dataset}
    header = ["method"] + [f"novel n={n}" for n in shots] + [f"all n={n}" for n in shots]
    best = {(metric, n): max((s[f"{metric}_mean"] for (m, k), s in get.items() if k == n), default=None)
            for metric in ("novel", "all") for n in shots}
    lines = []
    for m in methods:
        cells = [m if m != REFERENCE else f"**{m}**"]
        for metric in ("novel", "all"):
            for n in shots:
                s = get.get((m, n))
                if s is None:
                    cells.append("")
                    continue
                cell = f"{s[f'{metric}_mean']:.1f} ± {s[f'{metric}_std']:.1f}"
                if s[f"{metric}_mean"] == best[(metric, n)]:
                    cell = f"**{s[f'{metric}_mean']:.1f}** ± {s[f'{metric}_std']:.1f}"
                if m != REFERENCE and f"{metric}_delta" in s:
                    cell += f" ({s[f'{metric}_delta']:+.1f})"
                cells.append(cell)
        lines.append(cells)
    return _table(header, lines)


def cost_table(summary: list[dict], dataset: str, shots: list[int]) -> str:
    methods = list(dict.fromkeys(s["method"] for s in summary if s["dataset"] == dataset))
    get = {(s["method"], s["n"]): s for s in summary if s["dataset"] == dataset}
    mid, last = shots[len(shots) // 2], shots[-1]
    header = (["method"] + [f"add ms, n={n}" for n in shots] + [f"add ×, n={mid}"]
              + [f"predict ms, n={mid}", "predict ×", f"memory KiB, n={last}", "memory ×", "base setup s"])
    lines = []
    for m in methods:
        cells = [m if m != REFERENCE else f"**{m}**"]
        cells += [_ms(get[(m, n)]["add_s"]) if (m, n) in get else "" for n in shots]
        s_mid, s_last = get.get((m, mid)), get.get((m, last))
        cells.append(_x(s_mid.get("add_s_ratio", float("nan"))) if s_mid else "")
        cells += [_ms(s_mid["predict_s"]), _x(s_mid.get("predict_s_ratio", float("nan")))] if s_mid else ["", ""]
        cells += [_kib(s_last["bytes"]), _x(s_last.get("bytes_ratio", float("nan")))] if s_last else ["", ""]
        cells.append(f"{get[(m, shots[0])]['setup_s']:.2f}")
        lines.append(cells)
    return _table(header, lines)


# Why a peer can beat us: matched against the method name, first match wins.
WHY = [
    ("LogisticRegression",
     "a discriminative linear classifier on all 1280 features learns which directions separate each novel class "
     "from the base classes; averaging the shots cannot. It needs examples for that: at n = 1 it fails (a "
     "regularized fit barely moves a class seen once against about 30 examples per base class; "
     "class_weight='balanced' helps a little), while imprinting gives every class a unit-norm template whatever "
     "its count"),
    ("Fine-tune",
     "the same network as imprinting, but the FC layer and every class vector train on base + novel examples, "
     "so the embedding adapts to the novel classes, which imprinting never does. At n = 1 it over-fits and "
     "falls below imprinting"),
    ("SimpleShot",
     "easyfsl's SimpleShot with CL2N is our RawFeatureNCM with centring but without the power transform: the "
     "gap is the power transform, which helps from n = 5 and costs about a point at n = 1"),
    ("PrototypicalNetworks",
     "class means in the full 1280-d features keep information that the paper's 64-d FC embedding, trained on "
     "base classes only, discards; without normalization it is poor at n = 1"),
    ("easyfsl Finetune",
     "prototypes fine-tuned on the support set; the support is dominated by base examples, so at n = 1 the "
     "tuning pulls decisions towards base classes and novel top-1 drops below SimpleShot's"),
    ("k-NN", "stored examples keep multi-modal classes in the full 1280-d features; with 20 shots the nearest "
             "example beats the 64-d imprinted mean"),
    ("FAISS", "the same exact cosine search as scikit-learn's k-NN (same predictions), so the same reason"),
]


def _why(method: str) -> str:
    return next((text for key, text in WHY if key in method), "")


def peer_wins(summary: list[dict], margin: float = 0.0) -> list[dict]:
    """Every (dataset, n, metric) where a peer's mean top-1 beats the better of our entries."""
    wins = []
    ours_names = {s["method"] for s in summary if s["family"] == "ours"}
    for ds in dict.fromkeys(s["dataset"] for s in summary):
        for n in sorted({s["n"] for s in summary if s["dataset"] == ds}):
            at = [s for s in summary if s["dataset"] == ds and s["n"] == n]
            for metric in ("novel", "all"):
                best = max((s for s in at if s["method"] in ours_names), key=lambda s: s[f"{metric}_mean"])
                for s in at:
                    gap = s[f"{metric}_mean"] - best[f"{metric}_mean"]
                    if s["method"] in ours_names or gap <= margin:
                        continue
                    noise = s.get(f"{metric}_std", 0.0) + best.get(f"{metric}_std", 0.0)
                    wins.append({"dataset": ds, "n": n, "metric": metric, "peer": s["method"],
                                 "peer_top1": s[f"{metric}_mean"], "ours": best["method"],
                                 "ours_top1": best[f"{metric}_mean"], "gap": gap, "clear": gap > noise,
                                 "peer_add_s": s["add_s"], "ours_add_s": best["add_s"]})
    return wins


def wins_markdown(wins: list[dict]) -> str:
    if not wins:
        return "- Nowhere: no peer's mean top-1 exceeds our best entry.\n"
    header = ["data set", "n", "metric", "peer", "peer top-1", "our best entry", "ours top-1", "gap (points)",
              "beyond draw noise?", "peer add ms", "ours add ms"]
    lines = [[w["dataset"], str(w["n"]), w["metric"], w["peer"], f"{w['peer_top1']:.1f}", w["ours"],
              f"{w['ours_top1']:.1f}", f"+{w['gap']:.1f}", "yes" if w["clear"] else "no (gap ≤ sum of stds)",
              _ms(w["peer_add_s"]), _ms(w["ours_add_s"])] for w in wins]
    by_reason: dict[str, list[str]] = {}
    for m in dict.fromkeys(w["peer"] for w in wins):
        by_reason.setdefault(_why(m), []).append(m)
    why = [f"- {', '.join(f'**{m}**' for m in ms)}: {reason}." for reason, ms in by_reason.items()]
    return _table(header, lines) + "\n\nWhy, probably:\n\n" + "\n".join(why) + "\n"


def cheaper(summary: list[dict], below: float = 0.8) -> list[str]:
    """Where a peer costs less than Imprinting (ratio below ``below`` at every n)."""
    out = []
    for ds in dict.fromkeys(s["dataset"] for s in summary):
        for method in dict.fromkeys(s["method"] for s in summary if s["dataset"] == ds):
            rs = [s for s in summary if s["dataset"] == ds and s["method"] == method]
            if method == REFERENCE or not rs or "add_s_ratio" not in rs[0]:
                continue
            same_arrays = all(s["bytes_ratio"] == 1.0 for s in rs)  # same network: same prediction cost
            for key, what in (("add_s", "adds the novel classes"), ("predict_s", "predicts"),
                              ("bytes", "holds less memory")):
                if same_arrays and key != "add_s":
                    continue
                ratios = [s[f"{key}_ratio"] for s in rs]
                if max(ratios) < below:
                    out.append(f"{ds}: **{method}** {what} "
                               + ("" if key == "bytes" else "faster ")
                               + f"than Imprinting: {min(ratios):.2f}× to {max(ratios):.2f}× across n.")
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(s["dataset"] for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    fig, axes = plt.subplots(2, len(datasets), figsize=(7.5 * len(datasets), 10), squeeze=False)
    ours_colors = iter(["tab:blue", "tab:red", "black", "tab:cyan"])
    peer_colors = ["tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:gray",
                   "gold", "teal", "magenta", "lime", "navy", "salmon", "sienna"]
    family = {s["method"]: s["family"] for s in summary}
    color = {}
    for m in methods:
        color[m] = next(ours_colors, "tab:blue") if family[m] == "ours" else peer_colors[len(color) % len(peer_colors)]
    markers = "o^sDv<>ph*Xd8P"
    for j, ds in enumerate(datasets):
        for i, metric in enumerate(("novel", "all")):
            ax = axes[i][j]
            for k, m in enumerate(methods):
                pts = sorted((s for s in summary if s["dataset"] == ds and s["method"] == m), key=lambda s: s["n"])
                if not pts:
                    continue
                x = [max(s["add_s"], 1e-5) * 1e3 for s in pts]
                y = [s[f"{metric}_mean"] for s in pts]
                ours_style = pts[0]["family"] == "ours"
                ax.plot(x, y, marker=markers[k % len(markers)], color=color[m], label=m,
                        linewidth=2.5 if ours_style else 1, markersize=8 if ours_style else 6)
                for s, xi, yi in zip(pts, x, y):
                    ax.annotate(f"{s['n']}", (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("time to add the novel classes (ms, log scale; backbone forward excluded)")
            ax.set_ylabel(f"{metric} top-1 (%)")
            ax.set_title(f"{ds}: {metric}-class top-1 vs time to learn (labels: n)")
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_section(path: Path, name: str, text: str, title: str = "# Benchmarks") -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path``
    (appended when absent); whatever else the file holds is kept."""
    begin, end = f"<!-- {name}:begin (generated; do not edit by hand) -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else f"{title}\n"
    pattern = re.compile(re.escape(f"<!-- {name}:begin") + r".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def section(summary: list[dict], prov: dict, shots: list[int], plot_name: str) -> str:
    head = "\n".join(f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in prov.items())
    parts = ["## Side by side on cached features (`benchmarks/compare.py`)", "", head, "",
             "Accuracy cells: mean ± std over draws (difference to Imprinting in points; the best of each column "
             "in bold). Costs: fastest of repeated calls, median over draws; ratios are to **Imprinting** at the "
             "same n. \"add\" = from the base model to a classifier "
             "with the novel classes (backbone forwards excluded: they are the same for everyone); \"predict\" = "
             "scores for the whole test set from its backbone features; \"memory\" = arrays kept to predict; "
             "\"base setup\" = one-off work on base data only (base-model training for the methods built on it).",
             ""]
    for ds in dict.fromkeys(s["dataset"] for s in summary):
        m = next(s["test_images"] for s in summary if s["dataset"] == ds)
        parts += [f"### {ds}: top-1 (%)", "", accuracy_table(summary, ds, shots), "",
                  f"### {ds}: cost ({m} test images)", "", cost_table(summary, ds, shots), ""]
    parts += [f"![accuracy against time to learn]({plot_name})", "",
              "### Where a peer beats us (generated from the numbers above)", "",
              "Every case where a peer's mean top-1 is above the best of our entries "
              f"({REFERENCE}; {OURS_BEST_NAME}; {OURS_NCM_NAME}):", "", wins_markdown(peer_wins(summary)),
              "Where a peer is cheaper than Imprinting (cost ratio below 0.8 at every n; same-architecture "
              "methods predict at the same cost, so smaller differences are timing noise):", ""]
    parts += [f"- {c}" for c in cheaper(summary)] or ["- Nowhere."]
    return "\n".join(parts) + "\n"


def write_data(out: Path, rows: list[dict], summary: list[dict], prov: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks_compare.json").write_text(json.dumps({"provenance": prov, "summary": summary, "rows": rows},
                                                            indent=1))
    cols = ["dataset", "method", "family", "n", "draws", "novel_mean", "novel_std", "all_mean", "all_std",
            "novel_delta", "all_delta", "add_s", "add_s_ratio", "predict_s", "predict_s_ratio", "bytes",
            "bytes_ratio", "setup_s", "test_images"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(summary)
    (out / "benchmarks_compare.csv").write_text("".join(f"# {k}: {v}\n" for k, v in prov.items()) + buf.getvalue())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None, help="folder with cub/ and flowers102/ (default $IMPRINTING_DATA)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5, 20])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20, help="base training and last-layer fine-tuning epochs")
    p.add_argument("--cache", default=None, help="feature cache folder (default ~/.cache/imprinting)")
    p.add_argument("--out", default="results", help="writes benchmarks.md (its comparison section) and benchmarks_compare.*")
    p.add_argument("--skip", nargs="*", default=[], help="skip methods whose name contains any of these words")
    p.add_argument("--render", metavar="JSON", help="only re-render the report from a benchmarks_compare.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        rows, prov = saved["rows"], saved["provenance"]
        shots = sorted({r["n"] for r in rows})
        render(out, rows, summarize(rows), prov, shots)
        return

    from imprinting.report import provenance
    from imprinting.reproduce import prepare

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed)
    rows, described = [], []
    with limit_threads():
        for ds in args.datasets:
            t0 = time.perf_counter()
            data = prepare(ds, args.data_root, augment=2, seed=args.seed, cache=args.cache, progress=True)
            print(f"{ds}: features ready in {time.perf_counter() - t0:.1f} s", flush=True)
            described.append(f"{ds}: {len(data.train)} train / {len(data.test)} test images, "
                             f"{len(data.base)} base + {len(data.novel)} novel classes")
            methods = [m for m in contenders(cfg) if not any(w.lower() in m.name.lower() for w in args.skip)]
            eps = protocol.episodes(data, tuple(args.shots), args.draws, args.seed)
            rows += compare(data, methods, eps, cfg=cfg)
    total = time.perf_counter() - t_start
    summary = summarize(rows)
    versions = {k: available(k) or "not installed" for k in ("sklearn", "faiss", "easyfsl")}
    prov = provenance(["python", "benchmarks/compare.py", *(argv if argv is not None else sys.argv[1:])],
                      data="; ".join(described) + " (paper split; EfficientNet-Lite0 ImageNet features at 224 px, "
                           "cached; LogisticRegression / k-NN / easyfsl get the same features)",
                      shots=" ".join(map(str, args.shots)), draws=args.draws, seed=args.seed,
                      threads="1 (torch.set_num_threads(1), threadpoolctl BLAS/OpenMP limit 1, faiss 1)",
                      load_average=f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (shared machine)",
                      versions=", ".join(f"{k} {v}" for k, v in versions.items()),
                      seconds_total=round(total, 1))
    render(out, rows, summary, prov, args.shots)
    print(f"wrote {out / 'benchmarks.md'} in {total:.0f} s")


def render(out: Path, rows: list[dict], summary: list[dict], prov: dict, shots: list[int]) -> None:
    write_data(out, rows, summary, prov)
    plot(summary, out / "benchmarks_accuracy_vs_time.png")
    update_section(out / "benchmarks.md", "compare", section(summary, prov, shots, "benchmarks_accuracy_vs_time.png"))


if __name__ == "__main__":
    main()
