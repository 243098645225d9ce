"""Imprinting against the alternatives a user would pick, side by side, in one run.

On the same cached EfficientNet-Lite0 features of CUB and Flowers-102 (the paper's base /
novel split, ``imprinting.experiments.data.prepare(..., augment=2)``), for n = 1, 5, 20 novel
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
import json
import os
import sys
import time
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file

from compare_peers import EasyFSL, FaissFlat, SklearnKNN, SklearnLogReg, available  # noqa: E402
from compare_report import REFERENCE, peer_wins, section, update_section, wins_markdown, write_data  # noqa: E402,F401

from imprinting import protocol  # noqa: E402
from imprinting.experiments.beyond import BEST_NAME, best_method  # noqa: E402
from imprinting.methods import Finetune, FitResult, Imprinting, ImprintInit, Method, RandomInit  # noqa: E402
from imprinting.methods import ProductHead, RawFeatureNCM, WhitenedMeans  # noqa: E402
from imprinting.protocol import Episode, LowShotData  # noqa: E402
from imprinting.report.plots import plot_accuracy_vs_time  # noqa: E402
from imprinting.train import TrainConfig  # noqa: E402

# --------------------------------------------------------------------------------------
# Our best configuration: the one the protocol issue settled on (`imprint reproduce beyond`,
# results/<dataset>/beyond.md): ``imprinting.experiments.beyond.best_method``. To benchmark
# another, change these lines. ``make(data, base, seed)`` gets the data, the trained paper base
# model (FC 64 + cosine classifier) and the seed, and returns a Method; its construction
# (here: training its own 512-d base model) is timed as base setup.
OURS_BEST_NAME = f"Ours best: {BEST_NAME.removeprefix('Best: ')}"
OURS_BEST_MAKE: Callable[[LowShotData, object, int], Method] = lambda data, base, seed: best_method(data, seed)  # noqa: E731
# The simplest strong configuration, one line of the library (no base training at all):
OURS_NCM_NAME = "Ours: RawFeatureNCM (power 0.5, centered)"
OURS_NCM_MAKE: Callable[[LowShotData, object, int], Method] = lambda data, base, seed: RawFeatureNCM(center=True, power=0.5)  # noqa: E731
# The closed-form head of the product (`imprint create --head whitened`, imprinting.heads): whitened
# class means with a shot-count correction, its choices made on simulated base episodes.
OURS_WHITENED_NAME = "Ours: WhitenedMeans (chosen on training data)"
OURS_PRODUCT_NAME = "Ours: WhitenedHead as a model ships it (imprint train --head whitened)"
OURS_WHITENED_MAKE: Callable[[LowShotData, object, int], Method] = lambda data, base, seed: WhitenedMeans(seed=seed)  # noqa: E731
# --------------------------------------------------------------------------------------

DATASETS = ("cub", "flowers102")


@dataclass
class Entry:
    """One line of the comparison: ``make(data, base)`` builds its method once per data set
    (timed as base setup, plus the base model's training when ``uses_base_model``); ``name``,
    when given, renames it."""

    make: Callable[[LowShotData, object], Method]
    family: str
    name: str = ""
    uses_base_model: bool = False


def peer(method: Method) -> Entry:
    """A peer built without the data (its ``family`` and ``name`` are its own)."""
    return Entry(lambda data, base: method, method.family, method.name)


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


class Measured(Method):
    """``method`` with the bytes its scorer holds in ``info["nbytes"]`` (unless it says)."""

    def __init__(self, method: Method):
        self.method = method
        self.name = method.name

    def fit(self, data: LowShotData, episode: Episode) -> FitResult:
        result = self.method.fit(data, episode)
        if "nbytes" in result.info:
            return result
        return replace(result, info={**result.info, "nbytes": held_bytes(result.scorer)})


def ours(cfg: TrainConfig) -> list[Entry]:
    """The paper's configuration (the reference of every ratio), our best, and the plain
    raw-feature class means; the last two do not use the paper's base model."""
    return [
        Entry(lambda data, base: Imprinting(base), "ours", REFERENCE, uses_base_model=True),
        Entry(lambda data, base: OURS_BEST_MAKE(data, base, cfg.seed), "ours", OURS_BEST_NAME),
        Entry(lambda data, base: OURS_NCM_MAKE(data, base, cfg.seed), "ours", OURS_NCM_NAME),
        Entry(lambda data, base: OURS_WHITENED_MAKE(data, base, cfg.seed), "ours", OURS_WHITENED_NAME),
        Entry(lambda data, base: ProductHead(True, cfg.seed), "ours", OURS_PRODUCT_NAME),
    ]


def last_layer_finetuning(cfg: TrainConfig) -> list[Entry]:
    """The library's fine-tuning on cached features (FC layer + classifier + scale train,
    the backbone is frozen): from random novel weights (what a user without imprinting
    does) and from imprinted ones (Imprinting+FT)."""
    return [
        Entry(lambda data, base: Finetune(base, RandomInit(), cfg, record_history=False), "fine-tuning",
              "Fine-tune last layers, random init (Rand+FT)", uses_base_model=True),
        Entry(lambda data, base: Finetune(base, ImprintInit(), cfg, record_history=False), "fine-tuning",
              "Fine-tune last layers, imprinted init (Imprinting+FT)", uses_base_model=True),
    ]


def entries(data: LowShotData, cfg: TrainConfig, finetune_steps: int = 200) -> list[Entry]:
    out = ours(cfg) + [peer(m) for m in (SklearnLogReg("balanced"), SklearnLogReg(None), SklearnKNN(1), SklearnKNN(3))]
    if available("faiss"):
        out += [peer(FaissFlat(1)), peer(FaissFlat(3))]
    if available("easyfsl"):
        out += [Entry(lambda d, b: EasyFSL("SimpleShot", d), "easyfsl", "easyfsl SimpleShot (CL2N)"),
                peer(EasyFSL("PrototypicalNetworks")),
                Entry(lambda d, b: EasyFSL("Finetune", d, fine_tuning_steps=finetune_steps), "easyfsl",
                      "easyfsl Finetune (CL2N)")]
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


def compare(data: LowShotData, methods: list[Entry], eps: list[Episode], dim: int = 64,
            cfg: TrainConfig | None = None, progress: bool = True, min_seconds: float = 0.3) -> list[dict]:
    """Every entry on every episode through ``protocol.run`` (fits and predictions timed by
    ``timed``); one row per (method, n, draw)."""
    cfg = cfg or TrainConfig(epochs=20)
    t0 = time.perf_counter()
    base, _ = protocol.train_base(data, dim, cfg)
    base_seconds = time.perf_counter() - t0
    rows = []
    for e in methods:
        t0 = time.perf_counter()
        method = e.make(data, base)
        setup = time.perf_counter() - t0 + (base_seconds if e.uses_base_model else 0.0)
        method.name = e.name or method.name
        for r in protocol.run(data, [Measured(method)], eps, progress=False, timer=lambda fn: timed(fn, min_seconds)):
            info = dict(r.info)
            nbytes = int(info.pop("nbytes"))
            rows.append({"dataset": data.name, "method": r.method, "family": e.family, "n": r.n, "draw": r.draw,
                         "novel": r.novel, "all": r.all, "novel_only": r.novel_only, "add_s": r.fit_seconds,
                         "predict_s": r.predict_seconds, "bytes": nbytes, "setup_s": setup,
                         "test_images": len(data.test_feats), **info})
            if progress:
                print(f"  {data.name:10s} {r.method:55s} n={r.n:2d} draw={r.draw} novel {r.novel:5.1f} "
                      f"all {r.all:5.1f} add {r.fit_seconds * 1e3:9.2f} ms predict {r.predict_seconds * 1e3:8.2f} ms "
                      f"{nbytes / 1024:9.1f} KiB", flush=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (dataset, method, n): mean and std over draws of the accuracies (``protocol.summarize``),
    medians of the times, mean bytes; ratios to the reference (Imprinting) at the same dataset and n."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == ds]
        results = [protocol.Result(r["method"], r["n"], r["draw"], r["novel"], r["all"],
                                   r.get("novel_only", float("nan")), 0.0) for r in mine]
        for acc in protocol.summarize(results, exact=True):
            rs = [r for r in mine if (r["method"], r["n"]) == (acc["method"], acc["n"])]
            s = {"dataset": ds, "method": acc["method"], "family": rs[0]["family"], "n": acc["n"], "draws": len(rs)}
            for key in ("novel_mean", "novel_std", "all_mean", "all_std"):
                s[key] = acc[key]
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
    from imprinting.experiments.data import prepare

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
            methods = [e for e in entries(data, cfg) if not any(w.lower() in e.name.lower() for w in args.skip)]
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
    plot_accuracy_vs_time(summary, out / "benchmarks_accuracy_vs_time.png")
    update_section(out / "benchmarks.md", "compare", section(summary, prov, shots, "benchmarks_accuracy_vs_time.png"))


if __name__ == "__main__":
    main()
