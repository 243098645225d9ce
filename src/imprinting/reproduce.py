"""The paper's tables and figures on cached features: one function per table or figure.

Each writes Markdown, CSV and JSON (and PNG plots) under ``results/<dataset>/``, headed by
the exact command, seed, data, machine and date (``imprinting.report``).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from imprinting import protocol
from imprinting.backbones import create_backbone
from imprinting.data import ImageSet, data_root
from imprinting.data.features import View, cached_features
from imprinting.data.splits import base_novel_split
from imprinting.methods import (
    AllClassJoint,
    CosineEnsemble,
    Finetune,
    Imprinting,
    LiftedEmbedding,
    NearestNeighbour,
    RandomNovel,
    RawFeatureNCM,
)
from imprinting.methods.lifted import train_lifted_embedder
from imprinting.methods.raw import FeatureTransform
from imprinting.protocol import LowShotData
from imprinting.report import write_tables
from imprinting.train import TrainConfig

DATASETS = ("cub", "flowers102", "omniglot", "inaturalist")

# Paper numbers (CUB-200-2011, InceptionV1, 100 base + 100 novel classes).
PAPER_TABLE1 = {  # novel classes
    "Rand-noFT": [0.17] * 5,
    "Imprinting": [21.26, 28.69, 39.52, 45.77, 49.32],
    "Imprinting+Aug": [21.40, 30.03, 39.35, 46.35, 49.80],
    "Rand+FT": [5.25, 13.41, 34.95, 54.33, 65.60],
    "Imprinting+FT": [18.67, 30.17, 46.08, 59.39, 68.77],
    "AllClassJoint": [3.89, 10.82, 33.00, 50.24, 64.88],
}
PAPER_TABLE2 = {  # all classes
    "Rand-noFT": [37.36] * 5,
    "Imprinting": [44.75, 48.21, 52.95, 55.99, 57.47],
    "Imprinting+Aug": [44.60, 48.48, 52.78, 56.51, 57.84],
    "Rand+FT": [39.26, 43.36, 53.69, 63.17, 68.75],
    "Imprinting+FT": [45.81, 50.41, 59.15, 64.65, 68.73],
    "AllClassJoint": [38.02, 41.89, 52.24, 61.11, 68.31],
}
PAPER_SHOTS = (1, 2, 5, 10, 20)


def read_splits(dataset: str, root=None) -> tuple[ImageSet, ImageSet, str]:
    """(train, test, base/novel rule) in each data set's standard layout.

    Flowers-102: the official train and val splits together are the training set (20
    images per class, so that n = 20 is possible); the official test split is the test set.
    """
    root = data_root(root)
    if dataset == "cub":
        from imprinting.data.cub import read_cub

        return read_cub(root, "train"), read_cub(root, "test"), "cub"
    if dataset == "flowers102":
        from imprinting.data.flowers import read_flowers102

        tr, va = read_flowers102(root, "train"), read_flowers102(root, "val")
        train = ImageSet("flowers102/trainval", tr.paths + va.paths, tr.labels + va.labels, tr.class_names,
                         {"split": "train"})
        return train, read_flowers102(root, "test"), "flowers102"
    if dataset == "omniglot":
        from imprinting.data.omniglot import omniglot_train_test, read_omniglot

        train, test = omniglot_train_test(read_omniglot(root, "all"))
        return train, test, "omniglot"
    if dataset == "inaturalist":
        from imprinting.data.inaturalist import read_inaturalist

        return read_inaturalist(root, "train"), read_inaturalist(root, "val"), "inaturalist"
    raise ValueError(f"unknown data set {dataset!r}; choose from {', '.join(DATASETS)}")


def limit_classes(train: ImageSet, test: ImageSet, base: list[int], novel: list[int], limit: int | None):
    """Keep the first ``limit`` base and novel classes (tiny runs for tests and smoke checks)."""
    if not limit:
        return train, test, base, novel
    base, novel = base[:limit], novel[:limit]
    keep = set(base) | set(novel)
    pick = lambda s: s.subset([i for i, y in enumerate(s.labels) if y in keep], f"{s.name}-{limit}x2")  # noqa: E731
    return pick(train), pick(test), base, novel


def prepare(dataset: str, root=None, backbone: str = "efficientnet_lite0", image_size: int | None = None,
            augment: int = 5, seed: int = 0, cache=None, progress: bool = True,
            backbone_obj=None, limit: int | None = None) -> LowShotData:
    """Read a data set, split its classes, and compute (or load) cached backbone features.

    ``limit`` keeps only the first ``limit`` base and ``limit`` novel classes.
    """
    train, test, rule = read_splits(dataset, root)
    base, novel = base_novel_split(train, rule)
    train, test, base, novel = limit_classes(train, test, base, novel, limit)
    bb = backbone_obj or create_backbone(backbone, pretrained=True)
    pre = bb.preprocess.at_size(image_size)
    train_feats = cached_features(bb, train, pre, View(), cache, progress)
    aug = cached_features(bb, train, pre, View(augment, seed), cache, progress) if augment else None
    test_feats = cached_features(bb, test, pre, View(), cache, progress)
    return LowShotData(dataset, train, test, train_feats, test_feats, base, novel, aug)


def prepare_omniglot(root=None, dim: int = 64, cfg: TrainConfig | None = None, cache=None,
                     progress: bool = True, seed: int = 0, limit: int | None = None):
    """Omniglot: the small ConvNet trained from scratch, end to end, on the background
    characters; then its (frozen) backbone features feed every method.

    Returns ``(data, model, train_pixels, test_pixels, history)``: the trained full model and
    the preprocessed images are for end-to-end fine-tuning.
    """
    from imprinting.model import create_model
    from imprinting.train import TensorImageDataset, train

    train_set, test_set, rule = read_splits("omniglot", root)
    base, novel = base_novel_split(train_set, rule)
    train_set, test_set, base, novel = limit_classes(train_set, test_set, base, novel, limit)
    cfg = cfg or TrainConfig(epochs=10, optimizer="adam", lr=1e-3, head_lr_mult=1.0, batch_size=128, seed=seed)
    torch.manual_seed(seed)
    model = create_model("conv4", pretrained=False, dim=dim, class_names=[train_set.class_names[c] for c in base])
    train_px = cached_pixels(train_set, model.preprocess, cache, progress)
    test_px = cached_pixels(test_set, model.preprocess, cache, progress)
    tmp = LowShotData("omniglot", train_set, test_set, train_px.flatten(1)[:, :1], test_px.flatten(1)[:, :1], base, novel)
    idx = tmp.base_train_idx
    history = train(model, TensorImageDataset(train_px[idx], tmp.train_y[idx]), cfg, progress=progress)
    with torch.no_grad():
        feats = [torch.cat([model.embedder.forward_features(x[i : i + 1024]) for i in range(0, len(x), 1024)])
                 for x in (train_px, test_px)]
    data = LowShotData("omniglot", train_set, test_set, feats[0], feats[1], base, novel)
    return data, model, train_px, test_px, history


def cached_pixels(images: ImageSet, pre, cache=None, progress: bool = True) -> torch.Tensor:
    """The decoded, resized, normalized images (N, C, H, W) of ``pre`` (its centre crop),
    through the feature cache like any features: decoded once, then read back."""
    from torch import nn

    from imprinting.backbones import Backbone

    pixels = Backbone("pixels", nn.Flatten(), pre.in_chans * pre.image_size**2, pre, False, "pixels")
    shape = (-1, pre.in_chans, pre.image_size, pre.image_size)
    return cached_features(pixels, images, pre, View(), cache, progress).reshape(shape)


def head_of(model) -> "protocol.ImprintModel":
    """The FC + classifier of a full model, for methods that work on its cached features."""
    head = protocol.head_model(model.embedder.feature_dim, model.config["dim"], list(model.class_names),
                               per_class_scale=model.classifier.per_class_scale)
    head.embedder.fc.load_state_dict(model.embedder.fc.state_dict())
    head.classifier.load_state_dict(model.classifier.state_dict())
    return head.eval()


def training_square(pre):
    """What end-to-end training keeps of each image: resized as for testing (short side
    ``pre.resize_size``), then the centre square of side ``s``: the largest ``s`` up to the
    resize with ``s - pre.image_size`` a multiple of 4 (e.g. 180 for a 160 crop resized to 183).
    Random crops of ``pre.image_size`` come from it; with that multiple of 4, the centre crop of
    the square is, to the pixel, the test-time centre crop (both round half offsets alike)."""
    c = pre.image_size
    return replace(pre, image_size=c + 4 * ((pre.resize_size - c) // 4))


def _check_memory(images: int, pre) -> None:
    """End-to-end fine-tuning holds every image in memory (float32): refuse what cannot fit."""
    need = images * pre.in_chans * pre.image_size**2 * 4
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 3 * need > total:  # the images, a copy while caching, and the training subset
        raise MemoryError(f"end-to-end fine-tuning holds the {images} images in memory at {pre.image_size} px: "
                          f"{need / 2**30:.1f} GiB, x3 at peak, and this machine has {total / 2**30:.1f} GiB; "
                          "use a smaller --image-size or --limit-classes")


def with_backbone(head, backbone, preprocess=None) -> "protocol.ImprintModel":
    """A full model: ``backbone`` (a ``Backbone``, copied) under the FC + classifier of a base
    model trained on its cached features (the start of end-to-end fine-tuning)."""
    import copy

    from imprinting.model import Embedder, ImprintModel

    embedder = Embedder(copy.deepcopy(backbone.module), backbone.feature_dim, head.config["dim"])
    embedder.fc.load_state_dict(head.embedder.fc.state_dict())
    pre = preprocess or backbone.preprocess
    config = {"backbone": backbone.name, "dim": head.config["dim"], "preprocess": pre.to_dict()}
    return ImprintModel(embedder, copy.deepcopy(head.classifier), list(head.class_names), config).eval()


def end_to_end(data: LowShotData, backbone, image_size: int, shots=(1, 5, 20), draws: int = 1, seed: int = 0,
               dim: int = 64, epochs: int = 4, base_cfg: TrainConfig | None = None, cache=None,
               curves: bool = False, progress: bool = True):
    """End-to-end fine-tuning (the whole backbone trains) against the frozen-backbone methods,
    on the same episodes and at the same image size.

    The base model (FC + cosine classifier) is trained on the cached features of the frozen
    backbone, as for Tables 1 and 2; end-to-end fine-tuning then starts from it with the
    backbone's ImageNet weights, with the paper's optimizer for ``epochs`` epochs, on random
    crops + flips of the images held in memory (``training_square``: the centre square of the
    image resized as for testing; decoded once and cached like features, as float32: about
    2.3 GB for CUB and 3.2 GB for Flowers-102 at 160 px). ``curves`` evaluates after every
    epoch (Figures 3 and 4; costs a pass over the test images per epoch). Returns (results,
    timings).
    """
    from imprinting.methods.finetune_e2e import EndToEndFinetune

    timings = {}
    t0 = time.perf_counter()
    pre = backbone.preprocess.at_size(image_size)
    square = training_square(pre)
    _check_memory(len(data.train) + len(data.test), square)
    train_px = cached_pixels(data.train, square, cache, progress)
    test_px = cached_pixels(data.test, square, cache, progress)
    timings["seconds_pixels"] = round(time.perf_counter() - t0, 1)
    base_cfg = base_cfg or TrainConfig(epochs=20, seed=seed)
    t0 = time.perf_counter()
    base, _ = protocol.train_base(data, dim, base_cfg)
    timings["seconds_base_training"] = round(time.perf_counter() - t0, 1)
    full = with_backbone(base, backbone, pre)
    e2e_cfg = TrainConfig(epochs=epochs, seed=seed)  # the paper's recipe: RMSProp, 1e-4 backbone, 1e-3 new layers
    methods = [Imprinting(base), Finetune(base, "random", base_cfg), Finetune(base, "imprint", base_cfg)]
    methods += [EndToEndFinetune(full, train_px, test_px, init, e2e_cfg, curves, image_size, progress)
                for init in ("random", "imprint")]
    t0 = time.perf_counter()
    results = protocol.run(data, methods, protocol.episodes(data, shots, draws, seed), progress)
    timings["seconds_methods"] = round(time.perf_counter() - t0, 1)
    return results, timings


def _describe(data: LowShotData, root, backbone: str, image_size,
              use: str = "frozen, features cached") -> str:
    return (f"{data.name} at {data_root(root)}: {len(data.train)} train / {len(data.test)} test images, "
            f"{len(data.base)} base + {len(data.novel)} novel classes; backbone {backbone} "
            f"(ImageNet, {use}), image size {image_size or 'default'}")


def tables_1_2(data: LowShotData, shots=PAPER_SHOTS, draws: int = 5, seed: int = 0, dim: int = 64,
               cfg: TrainConfig | None = None, finetune: bool = True, progress: bool = True):
    """Tables 1 and 2 (and the per-epoch curves of Figures 3 and 4) on cached features."""
    cfg = cfg or TrainConfig(epochs=20, seed=seed)
    t0 = time.perf_counter()
    base, _ = protocol.train_base(data, dim, cfg)
    t_base = time.perf_counter() - t0
    methods = [RandomNovel(base), Imprinting(base)]
    if data.train_aug is not None:
        methods.append(Imprinting(base, augment=True))
    if finetune:
        methods += [Finetune(base, "random", cfg), Finetune(base, "imprint", cfg), AllClassJoint(dim, cfg)]
    eps = protocol.episodes(data, shots, draws, seed)
    results = protocol.run(data, methods, eps, progress)
    return results, {"seconds_base_training": round(t_base, 1)}


def figure_6(data: LowShotData, shots=PAPER_SHOTS, draws: int = 5, seed: int = 0, dim: int = 64,
             cfg: TrainConfig | None = None, progress: bool = True):
    """Averaged embeddings vs nearest neighbour, softmax vs lifted structured loss (novel-only)."""
    cfg = cfg or TrainConfig(epochs=20, seed=seed)
    base, _ = protocol.train_base(data, dim, cfg)
    lifted = train_lifted_embedder(data, dim, epochs=cfg.epochs, seed=seed)
    methods = [Imprinting(base), NearestNeighbour(base), LiftedEmbedding(lifted, "average"),
               LiftedEmbedding(lifted, "nearest")]
    return protocol.run(data, methods, protocol.episodes(data, shots, draws, seed), progress)


def figure_7(data: LowShotData, shots=(1, 5), dims=(64, 128, 256, 512), draws: int = 5, seed: int = 0,
             cfg: TrainConfig | None = None, progress: bool = True):
    """Imprinting and AllClassJoint at several embedding sizes."""
    cfg = cfg or TrainConfig(epochs=20, seed=seed)
    eps = protocol.episodes(data, shots, draws, seed)
    results = []
    for dim in dims:
        base, _ = protocol.train_base(data, dim, cfg)
        imp, joint = Imprinting(base), AllClassJoint(dim, cfg)
        imp.name, joint.name = f"Imprinting D={dim}", f"AllClassJoint D={dim}"
        results += protocol.run(data, [imp, joint], eps, progress)
    return results


def beyond(data: LowShotData, shots=PAPER_SHOTS, draws: int = 5, seed: int = 0, progress: bool = True,
           configs: dict | None = None):
    """Configurations beyond the paper's, against nearest class mean on raw features."""
    configs = configs or default_configs(seed)
    methods = [RawFeatureNCM(), RawFeatureNCM(center=True), RawFeatureNCM(power=0.5),
               RawFeatureNCM(center=True, power=0.5)]
    for name, (dim, cfg, scale, per_class, power) in configs.items():
        transform = FeatureTransform.fit(data, power) if power else None
        base, _ = protocol.train_base(data, dim, cfg, scale=scale, per_class_scale=per_class, transform=transform)
        m = Imprinting(base)
        m.name = name
        methods.append(m)
    methods.append(best_method(data, seed))
    return protocol.run(data, methods, protocol.episodes(data, shots, draws, seed), progress)


BEST_NAME = "Best: 0.4 x Imprinting D=512 + 0.6 x raw class means (power 0.5, centred)"


def best_method(data: LowShotData, seed: int = 0):
    """The best low-shot configuration found (results/README.md, 'Beyond the paper'): cosines of
    imprinting on a trained 512-d embedding, averaged with those of class means on the
    power-transformed, centred raw features."""
    base, _ = protocol.train_base(data, 512, TrainConfig(epochs=20, seed=seed))
    members = [(Imprinting(base, cosine=True), 0.4), (RawFeatureNCM(center=True, power=0.5), 0.6)]
    return CosineEnsemble(members, BEST_NAME)


def default_configs(seed: int = 0) -> dict:
    """name -> (embedding dim or None for no FC, training config, initial scale, per-class scale,
    power transform of the features (with centering) or None)."""
    paper = TrainConfig(epochs=20, seed=seed)
    return {
        "Imprinting (paper: D=64)": (64, paper, 10.0, False, None),
        "Imprinting D=512": (512, paper, 10.0, False, None),
        "Imprinting D=512, 5 epochs": (512, replace(paper, epochs=5), 10.0, False, None),
        "Imprinting no FC": (None, paper, 10.0, False, None),
        "Imprinting no FC, per-class s": (None, paper, 10.0, True, None),
        "Imprinting no FC, power 0.5 + centered": (None, paper, 10.0, False, 0.5),
        "Imprinting no FC, power 0.5 + centered, s=20": (None, paper, 20.0, False, 0.5),
    }


def write(results, out_dir: Path, stem: str, title: str, prov: dict, columns=None) -> Path:
    rows = protocol.summarize(results)
    columns = columns or ["method", "n", "novel", "all", "novel_only", "draws", "seconds"]
    return write_tables(out_dir, stem, title, rows, columns, prov)


def write_paper_comparison(results, out_dir: Path, prov: dict) -> Path:
    """Table 1 and 2 side by side with the paper's numbers."""
    rows = protocol.summarize(results)
    out = []
    for r in rows:
        paper1 = PAPER_TABLE1.get(r["method"])
        paper2 = PAPER_TABLE2.get(r["method"])
        i = PAPER_SHOTS.index(r["n"]) if r["n"] in PAPER_SHOTS else None
        out.append({
            "method": r["method"], "n": r["n"],
            "novel (ours)": r["novel"], "novel (paper, CUB)": paper1[i] if paper1 and i is not None else "",
            "all (ours)": r["all"], "all (paper, CUB)": paper2[i] if paper2 and i is not None else "",
            "draws": r["draws"], "seconds": r["seconds"],
        })
    cols = ["method", "n", "novel (ours)", "novel (paper, CUB)", "all (ours)", "all (paper, CUB)", "draws", "seconds"]
    return write_tables(out_dir, "tables_1_2", "Tables 1 and 2: top-1 (%) on novel and all classes", out, cols, prov)


CURVE_STYLES = {"Imprinting+FT": "-", "Rand+FT": "--", "AllClassJoint": ":",
                "Imprinting+FT (end to end)": "-.", "Rand+FT (end to end)": (0, (1, 3))}


def plot_curves(results, out_dir: Path, prov: dict, stem: str = "figures_3_4") -> Path:
    """Figures 3 and 4: per-epoch test accuracy of the fine-tuned models (mean over draws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, title in ((axes[0], "novel", "Figure 3: novel classes"), (axes[1], "all", "Figure 4: all classes")):
        for method, style in CURVE_STYLES.items():
            for n in sorted({r.n for r in results}):
                hs = [r.history for r in results if r.method == method and r.n == n and r.history]
                if not hs or metric not in hs[0][0]:
                    continue
                curve = np.mean([[h[metric] for h in hist] for hist in hs], axis=0)
                ax.plot(range(1, len(curve) + 1), curve, linestyle=style, label=f"{method} n={n}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 (%)")
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle(prov["command"], fontsize=7)
    fig.tight_layout()
    path = out_dir / f"{stem}.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lines(results, out_dir: Path, stem: str, metric: str, title: str, prov: dict) -> Path:
    """A line per method of ``metric`` against n (Figures 6 and 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = protocol.summarize(results)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        ax.errorbar([r["n"] for r in rs], [r[f"{metric}_mean"] for r in rs], [r[f"{metric}_std"] for r in rs],
                    marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xticks(sorted({r["n"] for r in rows}), [str(n) for n in sorted({r["n"] for r in rows})])
    ax.set_xlabel("n (examples per novel class)")
    ax.set_ylabel(f"top-1 (%), {metric.replace('_', ' ')}")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.text(0.01, 0.01, prov["command"], fontsize=5)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path




def plot_dims(results, out_dir: Path, prov: dict) -> Path:
    """Figure 7: top-1 against embedding size, a line per (method, n)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = protocol.summarize(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("novel", "all")):
        lines: dict = {}
        for r in rows:
            method, dim = r["method"].rsplit(" D=", 1)
            lines.setdefault((method, r["n"]), []).append((int(dim), r[f"{metric}_mean"], r[f"{metric}_std"]))
        for (method, n), pts in sorted(lines.items()):
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], marker="o", capsize=3,
                        label=f"{method} n={n}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("embedding size D")
        ax.set_ylabel(f"top-1 (%), {metric} classes")
        ax.legend(fontsize=7)
    fig.suptitle(f"Figure 7 - {prov['command']}", fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "figure_7.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_5(data: LowShotData, dim: int = 64, cfg: TrainConfig | None = None, seed: int = 0,
             show: int = 8) -> tuple[list[dict], dict]:
    """Figure 5: 1-shot exemplars sorted by their class's recall@1, and success/failure cases.

    Returns per-class rows (class, exemplar, recall) and the picked cases.
    """
    cfg = cfg or TrainConfig(epochs=20, seed=seed)
    base, _ = protocol.train_base(data, dim, cfg)
    (ep,) = protocol.episodes(data, shots=(1,), draws=1, seed=seed)
    scores = Imprinting(base).fit(data, ep)(data.test_feats)
    pred = scores.argmax(1)
    rows = []
    for c_idx, c in enumerate(data.novel, start=data.num_base):
        mask = data.test_y == c_idx
        exemplar = int(ep.shots[data.train_y[ep.shots] == c_idx][0])
        rows.append({"class": data.train.class_names[c], "exemplar": str(data.train.paths[exemplar]),
                     "recall_at_1": round(100.0 * (pred[mask] == c_idx).float().mean().item(), 2),
                     "test_images": int(mask.sum())})
    rows.sort(key=lambda r: -r["recall_at_1"])
    g = torch.Generator().manual_seed(seed)
    novel_idx = torch.nonzero(data.novel_test).flatten()
    ok = novel_idx[pred[novel_idx] == data.test_y[novel_idx]]
    bad = novel_idx[pred[novel_idx] != data.test_y[novel_idx]]
    exemplar_of = {r["class"]: r["exemplar"] for r in rows}
    names = data.names(data.order)

    def case(i):
        i = int(i)
        p = names[int(pred[i])]
        return {"test": str(data.test.paths[i]), "true": names[int(data.test_y[i])], "predicted": p,
                "predicted_exemplar": exemplar_of.get(p)}

    cases = {
        "success": [case(i) for i in ok[torch.randperm(len(ok), generator=g)[:show]]],
        "failure": [case(i) for i in bad[torch.randperm(len(bad), generator=g)[:show]]],
    }
    return rows, cases


def plot_figure_5(rows: list[dict], cases: dict, out_dir: Path, prov: dict, show: int = 8) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    picks = rows[:show] + rows[-show:]
    fig, axes = plt.subplots(4, show, figsize=(1.7 * show, 8.4))
    for ax, r in zip(axes[:2].flat, picks):
        ax.imshow(Image.open(r["exemplar"]).convert("RGB"))
        ax.set_title(f"{r['class'][:16]}\nrecall {r['recall_at_1']:.0f}%", fontsize=6)
    for row, kind in ((2, "success"), (3, "failure")):
        for ax, c in zip(axes[row], cases[kind]):
            ax.imshow(Image.open(c["test"]).convert("RGB"))
            color = "green" if kind == "success" else "red"
            ax.set_title(f"true {c['true'][:14]}\npred {c['predicted'][:14]}", fontsize=6, color=color)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Figure 5: 1-shot exemplars, best and worst classes (rows 1-2); random successes and failures "
                 f"(rows 3-4)\n{prov['command']}", fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "figure_5.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
