"""Transfer learning by imprinting on Flowers-102 (Table 3 of Qi, Brown and Lowe, CVPR
2018) from an ImageNet backbone: `imprint transfer`.

The backbone's pooled features, L2-normalized, are the embedding (no fully connected
layer, no training). The classifier is replaced by one weight per class, every class of
the data set being novel: imprinted from n training images (the normalized mean of their
embeddings), imprinted from random crop + flip versions of each (Imprinting+Aug), or
Xavier-uniform random (Rand-noFT). Top-1 is measured on the official test split over
nested draws of the n images, with the time imprinting takes per class (from cached
features, and from the JPEG files: decode + forward + imprint).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from imprinting.experiments.base import Experiment, Plan, option

if TYPE_CHECKING:  # annotations only: protocol is imported where it runs
    from imprinting import protocol

COLUMNS = ["method", "n", "top1_mean", "top1_std", "draws", "imprint_us_per_class", "ms_per_class_from_jpeg",
           "forward_ms_per_class"]


def methods(data) -> list:
    """Rand-noFT, Imprinting and (views cached) Imprinting+Aug on the bare, normalized features."""
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting.build import create_head

    # slow import: imprinting.methods loads scikit-learn (~1 s), only when the plan runs, not for --help
    from imprinting.methods import Imprinting, RandomNovel

    base = create_head(data.feature_dim, None, [])
    imprinting = [Imprinting(base, cosine=True)]
    if data.train_aug is not None:
        imprinting.append(Imprinting(base, augment=True, cosine=True))
    return [RandomNovel(base), *imprinting]


def time_end_to_end(model, images, n: int, classes: int = 5) -> dict:
    """Seconds to teach a class from n JPEG files (decode + forward + imprint), per class,
    and the plain forward time of the same images, measured on ``classes`` classes."""
    import torch  # heavy: imports torch; `imprint reproduce --help` stays fast

    from imprinting.data.transforms import eval_transform

    by_class: dict[int, list] = {}
    for p, y in zip(images.paths, images.labels):
        by_class.setdefault(y, []).append(p)
    picked = [files[:n] for _, files in sorted(by_class.items())[:classes]]
    model.embed_images(picked[0])  # warm-up
    t0 = time.perf_counter()
    for i, files in enumerate(picked):
        model.imprint(f"timing_{i}", files)
    per_class = (time.perf_counter() - t0) / len(picked)
    tf = eval_transform(model.preprocess)
    tensors = [torch.stack([tf(img) for img in model.load_images(files)]) for files in picked]
    with torch.inference_mode():
        t0 = time.perf_counter()
        for x in tensors:
            model.embed(x)
        forward = (time.perf_counter() - t0) / len(picked)
    return {"n": n, "seconds_per_class": per_class, "forward_seconds_per_class": forward}


def plan(setup, o) -> Plan:
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting import protocol
    from imprinting.build import create_model

    model = create_model(o.backbone, dim=None, image_size=o.image_size)
    jpeg = {n: time_end_to_end(model, setup.data.train, n) for n in o.shots}
    eps = protocol.episodes(setup.data, o.shots, o.draws, o.seed)
    return Plan([(methods(setup.data), eps)], {"seconds_total": None}, extra={"jpeg": jpeg})


def rows(results: list[protocol.Result], num_classes: int, jpeg: dict | None = None) -> list[dict]:
    """One row per (n, method), n first: top-1 mean and std over draws (every test image is of
    a novel class), and for Imprinting the time to imprint a class from its cached features."""
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting import protocol

    summary = protocol.summarize(results)
    shots = list(dict.fromkeys(r.n for r in results))
    out = []
    for s in sorted(summary, key=lambda s: shots.index(s["n"])):
        row = {"method": s["method"], "n": s["n"], "top1_mean": s["all_mean"], "top1_std": s["all_std"],
               "draws": s["draws"], "imprint_us_per_class": ""}
        if s["method"] == "Imprinting":
            fit = [r.fit_seconds for r in results if r.method == "Imprinting" and r.n == s["n"]]
            row["imprint_us_per_class"] = round(1e6 * float(sum(fit) / len(fit)) / num_classes, 2)
            if jpeg:
                row["ms_per_class_from_jpeg"] = round(1000 * jpeg[s["n"]]["seconds_per_class"], 1)
                row["forward_ms_per_class"] = round(1000 * jpeg[s["n"]]["forward_seconds_per_class"], 1)
        out.append(row)
    return out


def write(r):
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting.report import write_tables

    data = r.data
    path = write_tables(r.out, "transfer", "Transfer learning by imprinting on Flowers-102 (top-1 %, test split)",
                        rows(r.results, len(data.novel), r.plan.extra["jpeg"]), COLUMNS, r.prov)
    if r.options.save_model is not None:
        r.messages.append(save_model(r))
    return path


def save_model(r) -> str:
    """A model with every class imprinted from all its training images (for imprint serve)."""
    import torch  # heavy: imports torch; `imprint reproduce --help` stays fast
    import torch.nn.functional as F

    from imprinting import checkpoint
    from imprinting.build import create_model
    from imprinting.calibration import calibrate

    o, data = r.options, r.data
    full = create_model(o.backbone, dim=None, image_size=o.image_size)
    labels, emb = torch.tensor(data.train.labels), F.normalize(data.train_feats, dim=-1)
    for c, name in enumerate(data.train.class_names):  # the cached embeddings: no forward pass again
        full.add_class(name, emb[labels == c])
    c = calibrate(full, emb, [data.train.class_names[y] for y in labels.tolist()])  # false reject 5 %, guaranteed
    checkpoint.save(full, o.save_model)
    unknown = (f"unknown below cosine {c.unknown_threshold:.3f} (false reject at most {100 * c.target_false_reject:g} % "
               f"guaranteed, false accept about {100 * (c.false_accept or 0):.0f} % estimated)"
               if c.unknown_threshold is not None else f"no unknown threshold ({c.note})")
    return (f"wrote {o.save_model}: {full.num_classes} classes, {unknown}; try: imprint serve {o.save_model} "
            f"--store {o.save_model.with_suffix('.sqlite')}")


EXPERIMENT = Experiment(
    name="transfer",
    help="""Transfer learning by imprinting on Flowers-102 (paper Table 3).

    Imprints the 102 classes from n = 1, 5, 10 training images each onto an
    ImageNet-pretrained backbone and reports top-1 on the official test split against
    random weights, with the time spent per class. Backbone features are cached.
    """,
    data="flowers102-transfer",
    plan=plan,
    write=write,
    shared_options=False,
    options=(
        option("--data-root", type="path", default=None, envvar="IMPRINTING_DATA",
               help="Folder holding flowers102/ (env IMPRINTING_DATA; downloaded there when missing and online)."),
        option("--backbone", default="efficientnet_lite0", show_default=True, help="ImageNet-pretrained backbone."),
        option("--shots", "-n", type=int, multiple=True, default=(1, 5, 10), show_default=True,
               help="Training images per class (repeat the option)."),
        option("--draws", type=int, default=5, show_default=True, help="Random draws of the n images, nested across n."),
        option("--seed", type=int, default=0, show_default=True),
        option("--image-size", type=int, default=None, help="Crop size (default: the backbone's, 224 for Lite0)."),
        option("--augment", type=int, default=5, show_default=True,
               help="Random views per image for Imprinting+Aug (0: skip)."),
        option("--cache", type="path", default=None, envvar="IMPRINTING_CACHE",
               help="Feature cache folder (env IMPRINTING_CACHE, default ~/.cache/imprinting)."),
        option("--out", type="path", default="results/flowers102", show_default=True,
               help="Where to write transfer.md/.csv/.json."),
        option("--save-model", type="file", default=None,
               help="Also save a model with all 102 classes imprinted from every training image (for imprint serve)."),
    ),
)
