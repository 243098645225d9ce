"""``imprint transfer`` and ``imprint reproduce``: the paper's tables and figures."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.command()
@click.option("--data-root", type=click.Path(path_type=Path), default=None, envvar="IMPRINTING_DATA",
              help="Folder holding flowers102/ (env IMPRINTING_DATA; downloaded there when missing and online).")
@click.option("--backbone", default="efficientnet_lite0", show_default=True, help="ImageNet-pretrained backbone.")
@click.option("--shots", "-n", type=int, multiple=True, default=(1, 5, 10), show_default=True,
              help="Training images per class (repeat the option).")
@click.option("--draws", type=int, default=5, show_default=True, help="Random draws of the n images, nested across n.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--image-size", type=int, default=None, help="Crop size (default: the backbone's, 224 for Lite0).")
@click.option("--augment", type=int, default=5, show_default=True, help="Random views per image for Imprinting+Aug (0: skip).")
@click.option("--cache", type=click.Path(path_type=Path), default=None, envvar="IMPRINTING_CACHE",
              help="Feature cache folder (env IMPRINTING_CACHE, default ~/.cache/imprinting).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/flowers102"), show_default=True,
              help="Where to write transfer.md/.csv/.json.")
@click.option("--save-model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save a model with all 102 classes imprinted from every training image (for imprint serve).")
def transfer(data_root, backbone, shots, draws, seed, image_size, augment, cache, out, save_model):
    """Transfer learning by imprinting on Flowers-102 (paper Table 3).

    Imprints the 102 classes from n = 1, 5, 10 training images each onto an
    ImageNet-pretrained backbone and reports top-1 on the official test split against
    random weights, with the time spent per class. Backbone features are cached.
    """
    import time

    from imprinting import transfer as tr
    from imprinting.data import data_root as resolve_root
    from imprinting.data.flowers import read_flowers102
    from imprinting.model import create_model
    from imprinting.report import provenance, write_tables

    t_start = time.perf_counter()
    root = resolve_root(data_root)
    train = read_flowers102(root, "train")
    test = read_flowers102(root, "test")
    data = tr.prepare(train, test, backbone, image_size, augment, seed, cache)
    rows = tr.run(data, shots, draws, seed)
    model = create_model(backbone, dim=None, image_size=image_size)
    e2e = {n: tr.time_end_to_end(model, train, n) for n in shots}
    for r in rows:
        if r["method"] == "Imprinting":
            r["ms_per_class_from_jpeg"] = round(1000 * e2e[r["n"]]["seconds_per_class"], 1)
            r["forward_ms_per_class"] = round(1000 * e2e[r["n"]]["forward_seconds_per_class"], 1)
    prov = provenance(
        seed=seed,
        data=f"Flowers-102 at {root} ({len(train)} train / {len(test)} test images, 102 classes)",
        backbone=f"{backbone} (ImageNet), image size {model.preprocess.image_size}",
        seconds_features=round(data.seconds_features, 1),
        seconds_total=round(time.perf_counter() - t_start, 1),
    )
    columns = ["method", "n", "top1_mean", "top1_std", "draws", "imprint_us_per_class",
               "ms_per_class_from_jpeg", "forward_ms_per_class"]
    path = write_tables(out, "transfer", "Transfer learning by imprinting on Flowers-102 (top-1 %, test split)",
                        rows, columns, prov)
    click.echo(path.read_text())
    if save_model is not None:
        from imprinting import checkpoint

        import torch

        full = create_model(backbone, dim=None, image_size=image_size)
        labels = torch.tensor(train.labels)
        for c, name in enumerate(train.class_names):  # the cached embeddings: no forward pass again
            full.add_class(name, data.train_emb[labels == c])
        checkpoint.save(full, save_model)
        click.echo(f"wrote {save_model}: {full.num_classes} classes; try: imprint serve {save_model} --store "
                   f"{save_model.with_suffix('.sqlite')}")


# -- imprint reproduce -------------------------------------------------------------


def _protocol_options(**defaults):
    """The options every ``imprint reproduce`` command shares; ``defaults`` overrides some
    defaults (end-to-end runs want fewer shots, draws and epochs)."""
    d = {"image_size": None, "augment": 5, "shots": (1, 2, 5, 10, 20), "draws": 5, "epochs": 20, **defaults}
    options = [
        click.option("--dataset", type=click.Choice(["cub", "flowers102", "inaturalist"]), default="cub",
                     show_default=True, help="Data set, in its standard layout under the data root."),
        click.option("--data-root", type=click.Path(path_type=Path), default=None, envvar="IMPRINTING_DATA",
                     help="Folder holding cub/, flowers102/, omniglot/ (env IMPRINTING_DATA)."),
        click.option("--backbone", default="efficientnet_lite0", show_default=True, help="ImageNet-pretrained backbone."),
        click.option("--image-size", type=int, default=d["image_size"], show_default=d["image_size"] is not None,
                     help="Crop size." if d["image_size"] else "Crop size (default: the backbone's, 224)."),
        click.option("--augment", type=int, default=d["augment"], show_default=True,
                     help="Cached random crop + flip views per training image (Imprinting+Aug, training)."),
        click.option("--shots", "-n", type=int, multiple=True, default=d["shots"], show_default=True),
        click.option("--draws", type=int, default=d["draws"], show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--epochs", type=int, default=d["epochs"], show_default=True,
                     help=defaults.get("epochs_help", "Base training and fine-tuning epochs.")),
        click.option("--dim", type=int, default=64, show_default=True, help="Embedding size D."),
        click.option("--cache", type=click.Path(path_type=Path), default=None, envvar="IMPRINTING_CACHE",
                     help="Feature cache folder (env IMPRINTING_CACHE)."),
        click.option("--out", type=click.Path(path_type=Path), default=None,
                     help="Output folder (default results/<dataset>)."),
        click.option("--limit-classes", type=int, default=None,
                     help="Keep only the first K base and K novel classes (a quick smoke run)."),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@click.group()
def reproduce():
    """The paper's tables and figures, written under results/<dataset>/ with their command.

    Frozen-backbone mode: ImageNet-pretrained backbone features are computed once, cached,
    and shared by every method, draw and shot count. Base/novel split by the data set's rule
    (CUB: class id <= 100 is base; Flowers-102: class <= 51; iNaturalist: >= 100 training
    images). Omniglot has its own command (the small ConvNet trained from scratch).
    """


def _setup(dataset, data_root, backbone, image_size, augment, seed, cache, out, limit_classes, backbone_obj=None,
           use="frozen, features cached"):
    from imprinting import reproduce as rp

    t0 = time.perf_counter()
    data = rp.prepare(dataset, data_root, backbone, image_size, augment, seed, cache, backbone_obj=backbone_obj,
                      limit=limit_classes)
    extra = {"seed": seed, "data": rp._describe(data, data_root, backbone, image_size, use),
             "seconds_features": round(time.perf_counter() - t0, 1)}
    return data, extra, Path(out or f"results/{dataset}")


def _train_cfg(epochs, seed):
    from imprinting.train import TrainConfig

    return TrainConfig(epochs=epochs, seed=seed)


@reproduce.command("tables")
@_protocol_options()
@click.option("--no-finetune", is_flag=True, help="Skip Rand+FT, Imprinting+FT and AllClassJoint.")
def reproduce_tables(dataset, data_root, backbone, image_size, augment, shots, draws, seed, epochs, dim, cache, out,
                     limit_classes, no_finetune):
    """Tables 1 and 2 (novel and all classes) and Figures 3 and 4 (fine-tuning curves)."""
    from imprinting import reproduce as rp
    from imprinting.report import provenance

    data, extra, out = _setup(dataset, data_root, backbone, image_size, augment, seed, cache, out, limit_classes)
    t0 = time.perf_counter()
    results, info = rp.tables_1_2(data, shots, draws, seed, dim, _train_cfg(epochs, seed), not no_finetune)
    prov = provenance(**extra, **info, seconds_methods=round(time.perf_counter() - t0, 1))
    path = rp.write_paper_comparison(results, out, prov)
    rp.write(results, out, "tables_1_2_full", "Tables 1 and 2, every metric (mean ± std over draws)", prov)
    if not no_finetune:
        rp.plot_curves(results, out, prov)
    click.echo(path.read_text())


@reproduce.command("table3")
@_protocol_options()
def reproduce_table3(dataset, data_root, backbone, image_size, augment, shots, draws, seed, epochs, dim, cache, out,
                     limit_classes):
    """Table 3: transfer, the final layer replaced by novel weights only (novel-only top-1).

    Rand+FT and Imprinting+FT fine-tune the FC layer and the novel-only final layer on the
    n novel examples alone (frozen backbone).
    """
    from imprinting import protocol
    from imprinting import reproduce as rp
    from imprinting.methods import Finetune, Imprinting, RandomNovel
    from imprinting.report import provenance

    data, extra, out = _setup(dataset, data_root, backbone, image_size, augment, seed, cache, out, limit_classes)
    cfg = _train_cfg(epochs, seed)
    base, _ = protocol.train_base(data, dim, cfg)
    methods = [RandomNovel(base), Imprinting(base)] + ([Imprinting(base, True)] if data.train_aug is not None else [])
    methods += [Finetune(base, init, cfg, transfer=True) for init in ("random", "imprint")]
    results = protocol.run(data, methods, protocol.episodes(data, shots, draws, seed))
    path = rp.write(results, out, "table_3", "Table 3: transfer to the novel classes (novel_only column)",
                    provenance(**extra), ["method", "n", "novel_only", "draws", "seconds"])
    click.echo(path.read_text())


@reproduce.command("fig6")
@_protocol_options()
def reproduce_fig6(dataset, data_root, backbone, image_size, augment, shots, draws, seed, epochs, dim, cache, out,
                   limit_classes):
    """Figure 6: averaged embeddings vs nearest neighbour; softmax vs lifted structured loss."""
    from imprinting import reproduce as rp
    from imprinting.report import provenance

    data, extra, out = _setup(dataset, data_root, backbone, image_size, augment, seed, cache, out, limit_classes)
    results = rp.figure_6(data, shots, draws, seed, dim, _train_cfg(epochs, seed))
    prov = provenance(**extra)
    path = rp.write(results, out, "figure_6", "Figure 6: novel-only top-1, averaging vs nearest neighbour", prov)
    rp.plot_lines(results, out, "figure_6", "novel_only", "Figure 6: novel classes (novel-only)", prov)
    click.echo(path.read_text())


@reproduce.command("fig7")
@_protocol_options()
@click.option("--dims", type=int, multiple=True, default=(64, 128, 256, 512), show_default=True)
def reproduce_fig7(dataset, data_root, backbone, image_size, augment, shots, draws, seed, epochs, dim, cache, out,
                   limit_classes, dims):
    """Figure 7: Imprinting and AllClassJoint at embedding sizes 64-512 (use -n 1 -n 5)."""
    from imprinting import reproduce as rp
    from imprinting.report import provenance

    data, extra, out = _setup(dataset, data_root, backbone, image_size, augment, seed, cache, out, limit_classes)
    results = rp.figure_7(data, shots, dims, draws, seed, _train_cfg(epochs, seed))
    prov = provenance(**extra)
    path = rp.write(results, out, "figure_7", "Figure 7: embedding size", prov)
    rp.plot_dims(results, out, prov)
    click.echo(path.read_text())


@reproduce.command("e2e")
@_protocol_options(image_size=160, augment=2, shots=(1, 5, 20), draws=1, epochs=4,
                   epochs_help="End-to-end fine-tuning epochs (base training and frozen fine-tuning: 20).")
@click.option("--curves", is_flag=True, help="Evaluate after every epoch (Figures 3 and 4; one more test pass "
              "per epoch).")
def reproduce_e2e(dataset, data_root, backbone, image_size, augment, shots, draws, seed, epochs, dim, cache, out,
                  limit_classes, curves):
    """End-to-end fine-tuning of the whole network vs the frozen-backbone methods.

    Same episodes, same image size: Imprinting, Rand+FT and Imprinting+FT on frozen
    features (20 epochs), then Rand+FT and Imprinting+FT with the whole backbone training
    (the paper's optimizer, --epochs epochs, random crops + flips). The whole backbone
    trains on 2 CPU cores at 20-30 images/s at 160 px, so the defaults are small: n = 1, 5,
    20, one draw, 4 epochs.
    """
    from imprinting import reproduce as rp
    from imprinting.backbones import create_backbone
    from imprinting.report import provenance

    bb = create_backbone(backbone, pretrained=True)
    data, extra, out = _setup(dataset, data_root, backbone, image_size, augment, seed, cache, out, limit_classes,
                              bb, "frozen, or trained end to end")
    results, timings = rp.end_to_end(data, bb, image_size or bb.preprocess.image_size, shots, draws, seed, dim,
                                     epochs, _train_cfg(20, seed), cache, curves)
    prov = provenance(**extra, **timings, end_to_end=f"{epochs} epochs, RMSProp, lr 1e-4 backbone / 1e-3 FC and "
                      "classifier, batch 64, novel classes oversampled")
    path = rp.write(results, out, "end_to_end", "End-to-end fine-tuning vs frozen backbone: top-1 (%)", prov)
    if curves:
        rp.plot_curves(results, out, prov, stem="end_to_end_curves")
    click.echo(path.read_text())


@reproduce.command("beyond")
@_protocol_options()
def reproduce_beyond(dataset, data_root, backbone, image_size, augment, shots, draws, seed, epochs, dim, cache, out,
                     limit_classes):
    """Beyond the paper: other configurations against nearest class mean on raw features."""
    from imprinting import reproduce as rp
    from imprinting.report import provenance

    data, extra, out = _setup(dataset, data_root, backbone, image_size, augment, seed, cache, out, limit_classes)
    results = rp.beyond(data, shots, draws, seed)
    path = rp.write(results, out, "beyond", "Beyond the paper: configurations vs raw-feature class means",
                    provenance(**extra))
    click.echo(path.read_text())


@reproduce.command("fig5")
@_protocol_options()
def reproduce_fig5(dataset, data_root, backbone, image_size, augment, shots, draws, seed, epochs, dim, cache, out,
                   limit_classes):
    """Figure 5: 1-shot exemplars by per-class recall, and random success and failure cases."""
    from imprinting import reproduce as rp
    from imprinting.report import provenance, write_tables

    data, extra, out = _setup(dataset, data_root, backbone, image_size, augment, seed, cache, out, limit_classes)
    rows, cases = rp.figure_5(data, dim, _train_cfg(epochs, seed), seed)
    prov = provenance(**extra)
    path = write_tables(out, "figure_5", "Figure 5: per-class recall@1 of 1-shot imprinting (novel classes)",
                        rows, ["class", "recall_at_1", "test_images", "exemplar"], prov)
    rp.plot_figure_5(rows, cases, out, prov)
    click.echo(path.read_text())


@reproduce.command("omniglot")
@click.option("--data-root", type=click.Path(path_type=Path), default=None, envvar="IMPRINTING_DATA")
@click.option("--shots", "-n", type=int, multiple=True, default=(1, 2, 5, 10), show_default=True)
@click.option("--draws", type=int, default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=5, show_default=True, help="Base training epochs (from scratch).")
@click.option("--ft-epochs", type=int, default=3, show_default=True, help="Fine-tuning epochs.")
@click.option("--ft-lr", type=float, default=1e-4, show_default=True,
              help="Learning rate (Adam) of fine-tuning, frozen and end to end, and of AllClassJoint.")
@click.option("--e2e-shots", type=int, multiple=True, default=(1, 5), show_default=True,
              help="Shot counts for end-to-end fine-tuning (it costs minutes per episode on a CPU).")
@click.option("--e2e-draws", type=int, default=1, show_default=True, help="Draws for end-to-end fine-tuning.")
@click.option("--e2e-epochs", type=int, default=None, help="End-to-end fine-tuning epochs (default: --ft-epochs).")
@click.option("--dim", type=int, default=64, show_default=True)
@click.option("--cache", type=click.Path(path_type=Path), default=None, envvar="IMPRINTING_CACHE")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/omniglot"), show_default=True)
@click.option("--limit-classes", type=int, default=None, help="Keep only the first K base and K novel characters.")
def reproduce_omniglot(data_root, shots, draws, seed, epochs, ft_epochs, ft_lr, e2e_shots, e2e_draws, e2e_epochs,
                       dim, cache, out, limit_classes):
    """Omniglot: 964 background characters as base, 659 evaluation characters as novel.

    The small ConvNet is trained from scratch on the base characters; then every method,
    including end-to-end fine-tuning of the whole network.
    """
    from dataclasses import replace

    from imprinting import protocol
    from imprinting import reproduce as rp
    from imprinting.methods import AllClassJoint, Finetune, Imprinting, NearestNeighbour, RandomNovel
    from imprinting.methods.finetune_e2e import EndToEndFinetune
    from imprinting.report import provenance
    from imprinting.train import TrainConfig

    t0 = time.perf_counter()
    base_cfg = TrainConfig(epochs=epochs, optimizer="adam", lr=1e-3, head_lr_mult=1.0, batch_size=128, seed=seed)
    data, model, train_px, test_px, history = rp.prepare_omniglot(data_root, dim, base_cfg, cache, seed=seed,
                                                                  limit=limit_classes)
    t_base = time.perf_counter() - t0
    head = rp.head_of(model)
    ft = TrainConfig(epochs=ft_epochs, optimizer="adam", lr=ft_lr, head_lr_mult=1.0, batch_size=128, seed=seed)
    methods = [RandomNovel(head), Imprinting(head), NearestNeighbour(head),
               Finetune(head, "random", ft), Finetune(head, "imprint", ft), AllClassJoint(dim, ft)]
    e2e_cfg = replace(ft, epochs=ft_epochs if e2e_epochs is None else e2e_epochs)
    e2e = [EndToEndFinetune(model, train_px, test_px, init, e2e_cfg) for init in ("random", "imprint")]
    t1 = time.perf_counter()
    eps = protocol.episodes(data, sorted(set(shots) | set(e2e_shots)), draws, seed)
    results = protocol.run(data, methods, [e for e in eps if e.n in shots])
    results += protocol.run(data, e2e, [e for e in eps if e.n in e2e_shots and e.draw < e2e_draws])
    prov = provenance(seed=seed, data=f"Omniglot at {data_root}: {len(data.train)} train / {len(data.test)} test "
                      f"images (drawers 1-10 train, 11-20 test), {len(data.base)} base + {len(data.novel)} novel "
                      f"characters; conv4 trained from scratch at 28x28",
                      base_training=f"{epochs} epochs, final train top-1 {history[-1]['train_top1']:.1f}%",
                      fine_tuning=f"Adam lr {ft_lr:g}, batch 128, novel classes oversampled; {ft_epochs} epochs "
                      f"(frozen, AllClassJoint), {e2e_cfg.epochs} epochs (end to end)",
                      seconds_base_training=round(t_base, 1), seconds_methods=round(time.perf_counter() - t1, 1))
    path = rp.write(results, out, "tables_1_2", "Omniglot: top-1 (%) on novel and all classes", prov)
    rp.plot_curves(results, out, prov)
    click.echo(path.read_text())



COMMANDS = [transfer, reproduce]
