"""The paper's two-stage low-shot protocol on cached backbone features.

Stage 1 trains a base model (FC + cosine classifier) on every training image of the base
classes. Stage 2 gives each method the base model and n training images of every novel
class (a nested, seeded draw) and measures top-1 on the official test split:
  - ``novel``: test images of novel classes, predicted among all classes (Table 1),
  - ``all``: every test image, among all classes (Table 2),
  - ``novel_only``: test images of novel classes, among the novel classes only (Figure 6,
    and the transfer setting of Table 3).
Classes are indexed base first, then novel (``LowShotData.order``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from imprinting.build import build_model, create_head
from imprinting.data import ImageSet
from imprinting.data.splits import shot_draws, take
from imprinting.model import ImprintModel
from imprinting.spec import ModelSpec
from imprinting.train import FeatureDataset, TrainConfig, train


@dataclass
class LowShotData:
    """Cached backbone features of a data set's train and test splits, with the class split."""

    name: str
    train: ImageSet
    test: ImageSet
    train_feats: torch.Tensor  # (N, F) centre crops
    test_feats: torch.Tensor  # (M, F)
    base: list[int]
    novel: list[int]
    train_aug: torch.Tensor | None = None  # (N, k, F) random crop + flip views

    def __post_init__(self) -> None:
        self.order = list(self.base) + list(self.novel)
        position = {c: i for i, c in enumerate(self.order)}
        self.train_y = torch.tensor([position.get(y, -1) for y in self.train.labels])
        self.test_y = torch.tensor([position.get(y, -1) for y in self.test.labels])
        self.num_base = len(self.base)
        self.base_train_idx = torch.nonzero((self.train_y >= 0) & (self.train_y < self.num_base)).flatten()
        self.novel_test = (self.test_y >= self.num_base)
        self.known_test = self.test_y >= 0

    @property
    def feature_dim(self) -> int:
        return self.train_feats.shape[1]

    def names(self, classes: list[int]) -> list[str]:
        return [self.train.class_names[c] for c in classes]

    def train_views(self, idx: torch.Tensor) -> torch.Tensor:
        """Augmented views when cached (each epoch samples one), else the centre crops."""
        return self.train_aug[idx] if self.train_aug is not None else self.train_feats[idx]


@dataclass
class Episode:
    """One draw at one n: the indices of the novel training images given to the methods.

    Every seed a method derives from an episode comes from here, so that the committed
    results stay reproducible bit for bit whichever method asks.
    """

    draw: int
    n: int
    shots: torch.Tensor
    seed: int

    def training_seed(self, base_seed: int) -> int:
        """The seed of training on this episode (fine-tuning, AllClassJoint): the sample
        stream differs across draws and shot counts."""
        return base_seed + 1000 * self.draw + self.n

    def weights_seed(self, base_seed: int) -> int:
        """The seed of weights initialized from scratch for this episode (AllClassJoint):
        one per draw, the same at every n."""
        return base_seed + self.draw

    @property
    def init_seed(self) -> int:
        """The seed of random novel weights (Rand-noFT, Rand+FT): one per draw, the same at
        every n, so that the random classifiers of a draw are nested like its shots."""
        return 1000 * self.seed + self.draw


# -- Model building ----------------------------------------------------------------------
# Models come from the model's own construction path (``imprinting.model``): ``create_head``
# for FC + classifier over cached features, ``without_backbone`` / ``with_backbone`` to go
# between a full model and its head, ``with_classes`` for another class table.


def novel_only_model(model: ImprintModel, data: "LowShotData") -> ImprintModel:
    """The same embedder under a classifier of the novel rows of ``model`` alone (its classes
    base first, then novel): the final layer of transfer learning (Table 3)."""
    table = model.classes
    return model.with_classes(table.select(range(data.num_base, len(table))))


def linear_model(feature_dim: int, dim: int | None, class_names: list[str]) -> ImprintModel:
    """An FC layer + linear classifier with bias, no L2 normalization (AllClassJoint)."""
    spec = ModelSpec(backbone=None, pretrained=False, dim=dim, classifier="linear", feature_dim=feature_dim)
    return build_model(spec, class_names)


def copy_model(model: ImprintModel) -> ImprintModel:
    return copy.deepcopy(model)


# -- The protocol ------------------------------------------------------------------------


def train_base(data: LowShotData, dim: int | None = 64, cfg: TrainConfig | None = None,
               scale: float = 10.0, per_class_scale: bool = False, progress: bool = False,
               transform: torch.nn.Module | None = None):
    """Stage 1: FC + cosine classifier trained with softmax cross-entropy on the base classes.

    ``transform``: a fixed feature transform applied before the FC layer (or before the
    normalization when ``dim`` is None).
    """
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)  # the initial weights too depend on the seed alone
    model = create_head(data.feature_dim, dim, data.names(data.base), scale, per_class_scale)
    if transform is not None:
        model.embedder.fc = torch.nn.Sequential(transform, model.embedder.fc)
    idx = data.base_train_idx
    history = train(model, FeatureDataset(data.train_views(idx), data.train_y[idx]), cfg, progress=progress)
    return model, history


@torch.no_grad()
def embed(model: ImprintModel, feats: torch.Tensor) -> torch.Tensor:
    return model.embedder.forward_head(feats)


def accuracies(scores: torch.Tensor, data: LowShotData) -> dict:
    """Top-1 (%) on novel test images and all test images among all classes, and on novel
    test images among novel classes only. ``scores`` is (M, C) in ``data.order``."""
    y = data.test_y
    pred = scores.argmax(1)
    novel = data.novel_test
    known = data.known_test
    pred_novel_only = scores[:, data.num_base :].argmax(1) + data.num_base
    return {
        "novel": 100.0 * (pred[novel] == y[novel]).float().mean().item(),
        "all": 100.0 * (pred[known] == y[known]).float().mean().item(),
        "novel_only": 100.0 * (pred_novel_only[novel] == y[novel]).float().mean().item(),
    }


def episodes(data: LowShotData, shots=(1, 2, 5, 10, 20), draws: int = 5, seed: int = 0) -> list[Episode]:
    """Nested, seeded n-shot draws of the novel classes' training images."""
    perms = shot_draws(data.train.labels, data.novel, shots=shots, draws=draws, seed=seed)
    return [Episode(d, n, torch.tensor(take(perm, n)), seed) for d, perm in enumerate(perms) for n in shots]


@dataclass
class Result:
    """One method on one episode: top-1 (%), wall seconds (fitting, then scoring the test
    set), the training history (per-epoch dicts) and what the method reported (``info``)."""

    method: str
    n: int
    draw: int
    novel: float
    all: float
    novel_only: float
    seconds: float
    history: list = field(default_factory=list)
    fit_seconds: float = 0.0
    predict_seconds: float = 0.0
    info: dict = field(default_factory=dict)
    scores: torch.Tensor | None = None  # the test scores (M, C), kept when asked


def once(fn):
    """(result, wall seconds) of one call: ``run``'s default timer."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run(data: LowShotData, methods: list, eps: list[Episode], progress: bool = True, timer=once,
        keep_scores: bool = False) -> list[Result]:
    """Every method on every episode (method by method); each method copies the base model.

    ``timer(fn) -> (result, seconds)`` times fitting and scoring (benchmarks repeat fast
    calls); ``keep_scores`` keeps each episode's test scores in its result (Figure 5).
    Scores are compared in float32 whatever type a method returns.
    """
    results = []
    bar = tqdm(total=len(methods) * len(eps), desc=f"{data.name} protocol", disable=not progress)
    for method in methods:
        for ep in eps:
            bar.set_postfix_str(f"{method.name} n={ep.n} draw={ep.draw}")
            fit, fit_s = timer(lambda: method.fit(data, ep))
            with torch.no_grad():
                scores, predict_s = timer(lambda: fit.scorer(data.test_feats))
            scores = torch.as_tensor(scores).float()
            results.append(Result(method.name, ep.n, ep.draw, **accuracies(scores, data), seconds=fit_s + predict_s,
                                  history=list(fit.history), fit_seconds=fit_s, predict_seconds=predict_s,
                                  info=dict(fit.info), scores=scores if keep_scores else None))
            bar.update(1)
    bar.close()
    return results


def summarize(results: list[Result], exact: bool = False) -> list[dict]:
    """Mean and standard deviation over draws, one row per (method, n), methods in the order
    they ran. Means and stds are rounded to 2 decimals (``exact``: not rounded)."""
    rows = []
    keys = sorted({(r.method, r.n) for r in results}, key=lambda k: ([r.method for r in results].index(k[0]), k[1]))
    for method, n in keys:
        rs = [r for r in results if r.method == method and r.n == n]
        row = {"method": method, "n": n, "draws": len(rs)}
        for metric in ("novel", "all", "novel_only"):
            values = [getattr(r, metric) for r in rs]
            mean, std = float(np.mean(values)), float(np.std(values))
            row[metric] = f"{np.mean(values):.2f} ± {np.std(values):.2f}"
            row[f"{metric}_mean"] = mean if exact else round(mean, 2)
            row[f"{metric}_std"] = std if exact else round(std, 2)
        row["seconds"] = round(float(np.mean([r.seconds for r in rs])), 3)
        rows.append(row)
    return rows
