"""What the closed-form head costs in the product: adding a class and predicting, against the
paper's head, through the public API (a headless model on 1280-d EfficientNet-Lite0-sized
embeddings, synthetic unit vectors; the cost does not depend on the values).

    .venv/bin/python benchmarks/heads_cost.py --classes 1000 10000

Prints one table: per class count, the median time of ``imprint_embeddings`` for a new class
of 5 examples, and of ``predict_embeddings`` (top-5) for 64 queries, with each head: the paper's,
the whitened head with a frozen correction by shot count (files from before the rule), and with
the correction rule that chooses for the classes held (``heads.rule``, the default now).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import numpy as np
import torch

from imprinting import heads
from imprinting.build import build_model
from imprinting.classes import ClassTable
from imprinting.spec import ModelSpec


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def model_with(classes: int, dim: int, whitened: bool, rng, rule: bool = False) -> object:
    model = build_model(ModelSpec(backbone=None, pretrained=False, dim=None, feature_dim=dim, power=0.5))
    sums = _unit(rng.normal(size=(classes, dim))) * 5
    table = ClassTable.from_arrays([f"c{i}" for i in range(classes)], _unit(sums), sums, np.full(classes, 5),
                                   model.classes.scale)
    if whitened:
        a = rng.normal(size=(dim, 2 * dim)) / np.sqrt(2 * dim)
        taught = None
        if rule:  # the correction rule: 512 reference rows of the first 128 classes, a made-up recall
            refs = _unit(rng.normal(size=(512, dim)))
            recall = {(c, n): rng.random() for c in heads.EPISODE_CORRECTIONS for n in (1, 2, 5, 10)}
            taught = heads.TaughtSetRule(refs, [f"c{i // 4}" for i in range(512)], recall)
        table.set_head(heads.WhitenedHead(rng.normal(size=dim) * 0.01, a @ a.T, 0.8, {1: 0.5, 5: 0.75}, rule=taught))
    model.set_classes(table, copy=False)
    return model


def median_ms(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", nargs="+", type=int, default=[1000, 10000])
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)  # one BLAS thread: a shared 2-core machine
    rng = np.random.default_rng(args.seed)
    print(f"- command: python benchmarks/heads_cost.py --classes {' '.join(map(str, args.classes))} --dim {args.dim}")
    print(f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
          f"{platform.processor() or 'cpu'}, torch and BLAS threads 1; seed {args.seed}; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| classes | head | add a class of 5 examples (ms) | predict 64 queries, top-5 (ms) |")
    print("|---:|---|---:|---:|")
    queries = torch.from_numpy(_unit(rng.normal(size=(64, args.dim))).astype(np.float32))
    for c in args.classes:
        for whitened, rule in ((False, False), (True, False), (True, True)):
            model = model_with(c, args.dim, whitened, rng, rule)
            new = [torch.from_numpy(_unit(rng.normal(size=(5, args.dim))).astype(np.float32)) for _ in range(args.repeats)]
            add = median_ms(lambda i: model.imprint_embeddings(f"new{i}", new[i]), args.repeats)
            model.predict_embeddings(queries)  # warm up
            pred = median_ms(lambda i: model.predict_embeddings(queries, k=5), max(5, args.repeats // 5))
            name = ("whitened means, correction rule (512 reference rows)" if rule else "whitened means, frozen correction") \
                if whitened else "normalized mean (paper)"
            print(f"| {c:,} | {name} | {add:.2f} | {pred:.1f} |", flush=True)


if __name__ == "__main__":
    main()
