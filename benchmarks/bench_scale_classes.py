"""Many classes (``benchmarks/bench_scale.py --part classes``): adding classes one at a time,
top-5 over all of them, the checkpoint, and nearest neighbour over every stored example."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from imprinting.report import markdown_table


def _model(dim: int, backbone: bool = False):
    from imprinting.build import create_head, create_model

    if backbone:
        return create_model("efficientnet_lite0", dim=dim, pretrained=False)
    return create_head(1280, dim, [])


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def part_classes(args) -> dict:
    import torch.nn.functional as F

    from imprinting import checkpoint
    from imprinting.methods.nearest import max_cosine_per_class

    torch.set_num_threads(args.class_threads)
    C, D = args.classes, args.dim
    g = torch.Generator().manual_seed(0)
    protos = F.normalize(torch.randn(C, D, generator=g), dim=1)
    out: dict = {"classes": C, "dim": D}

    # (a) one class at a time, with a backbone-bearing model (the one a checkpoint holds)
    model = _model(D, backbone=True)
    windows, step = [], C // 10
    for w in range(10):
        t0 = time.perf_counter()
        for c in range(w * step, (w + 1) * step):
            model.add_class(f"species {c}", protos[c : c + 1])
        windows.append(1e6 * (time.perf_counter() - t0) / step)
    out["add_us_per_class"] = windows

    # (b) top-5 prediction over C classes: the library's calls, and the bare cost with the
    # class vectors normalized once (what a classifier caching its templates would pay)
    queries = {b: F.normalize(protos[:b] + 0.3 / D**0.5 * torch.randn(b, D, generator=g), dim=1) for b in (1, 64)}
    templates = model.classifier.templates().detach()
    pred = {}
    for b, q in queries.items():
        pred[b] = {
            "predict_embeddings_ms": 1000 * _median(lambda q=q: model.predict_embeddings(q, 5), 5),
            "classifier_top5_ms": 1000 * _median(lambda q=q: model.classifier(q).softmax(1).topk(5, dim=1), 9),
            "normalized_once_top5_ms": 1000 * _median(lambda q=q: (q @ templates.t()).topk(5, dim=1), 9),
        }
        assert model.predict_embeddings(q, 5)[0].classes[0] == "species 0"
    out["predict"] = pred

    # (c) checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        out["save_s"] = _median(lambda: checkpoint.save(model, path), 3)
        out["file_mb"] = path.stat().st_size / 1e6
        out["load_s"] = _median(lambda: checkpoint.load(path), 3)
        loaded = checkpoint.load(path)
        assert loaded.num_classes == C and torch.equal(loaded.classifier.weight, model.classifier.weight)
    w = model.classifier.weight
    out["imprint_bytes_weights"] = w.numel() * w.element_size()
    out["imprint_bytes_sums"] = model.classes.sums.nbytes + model.classes.counts.nbytes
    del model, loaded

    # (d) nearest neighbour over every stored example: the library's max_cosine_per_class,
    # and the bare cost with the examples normalized once and stored class by class
    nn_rows = []
    for n in (1, 2, 5, 10, 20):
        noise = 0.3 / D**0.5 * torch.randn(C * n, D, generator=g)
        examples = F.normalize(protos.repeat_interleave(n, 0) + noise, dim=1)
        del noise
        labels = torch.arange(C).repeat_interleave(n)
        row = {"n": n, "examples": C * n, "bytes": examples.numel() * 4}
        for b, q in queries.items():
            reps = 3 if n < 10 or b == 1 else 1
            row[f"library_b{b}_ms"] = 1000 * _median(
                lambda q=q: max_cosine_per_class(q, examples, labels, C).topk(5, 1), reps)
            row[f"normalized_once_b{b}_ms"] = 1000 * _median(
                lambda q=q: (q @ examples.t()).reshape(len(q), C, n).amax(2).topk(5, 1), reps)
        assert max_cosine_per_class(queries[1], examples, labels, C).argmax().item() == 0
        nn_rows.append(row)
        del examples, labels
    out["nearest"] = nn_rows

    print(f"\n## {C:,} classes, D = {D} ({args.class_threads} thread(s))\n")
    print("Adding classes one at a time (µs per class, per tenth of the run):\n")
    print(markdown_table([{"classes": f"{i * step:,}-{(i + 1) * step:,}", "µs per class": f"{v:.1f}"}
                  for i, v in enumerate(windows)], ["classes", "µs per class"]))
    print(f"\nTop-5 over {C:,} classes (ms): " + "; ".join(
        f"batch {b}: predict_embeddings {p['predict_embeddings_ms']:.1f}, classifier + softmax + top-5 "
        f"{p['classifier_top5_ms']:.1f}, class vectors normalized once {p['normalized_once_top5_ms']:.1f}"
        for b, p in pred.items()))
    print(f"\nCheckpoint (Lite0 + FC + {C:,} classes): {out['file_mb']:.0f} MB, save {out['save_s']:.2f} s, "
          f"load {out['load_s']:.2f} s\n")
    mb = 1e6
    cols = ["classifier", "n", "memory MB", "1 query: library (ms)", "1 query: normalized once (ms)",
            "64 queries: library (ms)", "64 queries: normalized once (ms)"]
    rows = [{"classifier": "imprinting (class vectors; + running sums)", "n": "any",
             "memory MB": f"{out['imprint_bytes_weights'] / mb:.0f} (+{out['imprint_bytes_sums'] / mb:.0f})",
             cols[3]: f"{pred[1]['classifier_top5_ms']:.1f}", cols[4]: f"{pred[1]['normalized_once_top5_ms']:.1f}",
             cols[5]: f"{pred[64]['classifier_top5_ms']:.1f}", cols[6]: f"{pred[64]['normalized_once_top5_ms']:.1f}"}]
    rows += [{"classifier": "nearest neighbour (every example)", "n": r["n"], "memory MB": f"{r['bytes'] / mb:.0f}",
              cols[3]: f"{r['library_b1_ms']:.1f}", cols[4]: f"{r['normalized_once_b1_ms']:.1f}",
              cols[5]: f"{r['library_b64_ms']:.1f}", cols[6]: f"{r['normalized_once_b64_ms']:.1f}"}
             for r in nn_rows]
    print(markdown_table(rows, cols))
    return out
