"""The one runner of every experiment: prepare the data, run the plan through
``protocol.run``, head the results with their provenance, write tables and plots.

``run(experiment, options)``: ``options`` are the command's options by name (``dataset``,
``data_root``, ``backbone``, ``image_size``, ``augment``, ``shots``, ``draws``, ``seed``,
``epochs``, ``dim``, ``cache``, ``out``, ``limit_classes`` and the experiment's own).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from imprinting import protocol
from imprinting.backbones import create_backbone
from imprinting.data import data_root
from imprinting.data.features import View, cached_features
from imprinting.data.flowers import read_flowers102
from imprinting.experiments.base import Experiment, Plan
from imprinting.experiments.data import describe, omniglot_config, prepare, prepare_omniglot
from imprinting.protocol import LowShotData
from imprinting.report import provenance, write_tables
from imprinting.train import TrainConfig


@dataclass
class Setup:
    """Prepared data: ``data`` (cached features), provenance entries (``extra``), the output
    folder, and what some experiments need besides (the backbone, a trained model...)."""

    data: LowShotData
    extra: dict
    out: Path
    seconds: float = 0.0
    backbone: object = None  # end to end: the backbone (a ``Backbone``) the features came from
    more: dict = field(default_factory=dict)  # Omniglot: model, pixels, history


@dataclass
class Run:
    """Everything ``write`` gets."""

    experiment: Experiment
    options: SimpleNamespace
    setup: Setup
    plan: Plan
    results: list[protocol.Result]
    prov: dict
    messages: list[str] = field(default_factory=list)  # printed after the table

    @property
    def out(self) -> Path:
        return self.setup.out

    @property
    def data(self) -> LowShotData:
        return self.setup.data


def _features(o, backbone_obj=None, use="frozen, features cached") -> Setup:
    t0 = time.perf_counter()
    data = prepare(o.dataset, o.data_root, o.backbone, o.image_size, o.augment, o.seed, o.cache,
                   backbone_obj=backbone_obj, limit=o.limit_classes)
    extra = {"seed": o.seed, "data": describe(data, o.data_root, o.backbone, o.image_size, use),
             "seconds_features": round(time.perf_counter() - t0, 1)}
    return Setup(data, extra, Path(o.out or f"results/{o.dataset}"), backbone=backbone_obj)


def _features_and_backbone(o) -> Setup:
    """Features, and the backbone kept (end-to-end fine-tuning trains a copy of it)."""
    return _features(o, create_backbone(o.backbone, pretrained=True), "frozen, or trained end to end")


def _omniglot(o) -> Setup:
    """The ConvNet trained from scratch on the background characters; its features."""
    t0 = time.perf_counter()
    data, model, train_px, test_px, history = prepare_omniglot(o.data_root, o.dim, omniglot_config(o.epochs, o.seed),
                                                               o.cache, seed=o.seed, limit=o.limit_classes)
    extra = {"seed": o.seed, "data": f"Omniglot at {o.data_root}: {len(data.train)} train / {len(data.test)} test "
             f"images (drawers 1-10 train, 11-20 test), {len(data.base)} base + {len(data.novel)} novel "
             "characters; conv4 trained from scratch at 28x28"}
    return Setup(data, extra, Path(o.out), time.perf_counter() - t0,
                 more={"model": model, "train_px": train_px, "test_px": test_px, "history": history})


def _flowers102_transfer(o) -> Setup:
    """Flowers-102's official train and test splits, every class novel (no base classes)."""
    root = data_root(o.data_root)
    train, test = read_flowers102(root, "train"), read_flowers102(root, "test")
    bb = create_backbone(o.backbone, pretrained=True)
    pre = bb.preprocess.at_size(o.image_size)
    t0 = time.perf_counter()
    f_train = cached_features(bb, train, pre, View(), o.cache, True)
    f_aug = cached_features(bb, train, pre, View(o.augment, o.seed), o.cache, True) if o.augment else None
    f_test = cached_features(bb, test, pre, View(), o.cache, True)
    seconds = time.perf_counter() - t0
    data = LowShotData("flowers102", train, test, f_train, f_test, [], sorted(set(train.labels)), f_aug)
    extra = {"seed": o.seed, "data": f"Flowers-102 at {root} ({len(train)} train / {len(test)} test images, 102 classes)",
             "backbone": f"{o.backbone} (ImageNet), image size {pre.image_size}",
             "seconds_features": round(seconds, 1)}
    return Setup(data, extra, Path(o.out), seconds, backbone=bb)


SETUPS = {
    "features": _features,
    "features+backbone": _features_and_backbone,
    "omniglot": _omniglot,
    "flowers102-transfer": _flowers102_transfer,
}


def run(experiment: Experiment, options: dict) -> Run:
    """Prepare, run, write: returns the run (``run.messages``, and the printed table's path
    in ``run.path``)."""
    t_start = time.perf_counter()
    o = SimpleNamespace(**options)
    setup = SETUPS[experiment.data](o)
    plan = experiment.plan(setup, o)
    t0 = time.perf_counter()
    results = []
    for methods, eps in plan.stages:
        results += protocol.run(setup.data, methods, eps, keep_scores=plan.keep_scores)
    info = dict(plan.info)
    for key, since in (("seconds_methods", t0), ("seconds_total", t_start)):
        if key in info and info[key] is None:
            info[key] = round(time.perf_counter() - since, 1)
    r = Run(experiment, o, setup, plan, results, provenance(**setup.extra, **info))
    r.path = experiment.write(r)
    return r


# -- helpers of the experiments ---------------------------------------------------------------


def train_config(epochs: int, seed: int) -> TrainConfig:
    """The paper's recipe (RMSProp) for ``epochs`` epochs."""
    return TrainConfig(epochs=epochs, seed=seed)


def timed_base(data: LowShotData, dim: int | None, cfg: TrainConfig, **kw):
    """(base model, seconds) of ``protocol.train_base``."""
    t0 = time.perf_counter()
    base, _ = protocol.train_base(data, dim, cfg, **kw)
    return base, round(time.perf_counter() - t0, 1)


def write_results(r: Run, stem: str, title: str, columns=None, results=None) -> Path:
    """The summary of the results (mean ± std over draws per method and n) as ``stem``.md/.csv/.json."""
    rows = protocol.summarize(r.results if results is None else results)
    columns = columns or ["method", "n", "novel", "all", "novel_only", "draws", "seconds"]
    return write_tables(r.out, stem, title, rows, columns, r.prov)
