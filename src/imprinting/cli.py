"""The ``imprint`` command. Thin: every subcommand calls the library."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from imprinting.backbones import BackboneError
from imprinting.checkpoint import CheckpointError
from imprinting.data import DatasetError
from imprinting.data.images import ImageError
from imprinting.model import UnknownClassError

USER_ERRORS = (ImageError, CheckpointError, DatasetError, BackboneError, UnknownClassError, ValueError)


class _Group(click.Group):
    """Turns the library's user-facing errors into one line and exit status 1, and records the
    command line for the provenance of result tables."""

    def main(self, args=None, *a, **kw):
        from imprinting import report

        report.COMMAND = ["imprint", *(sys.argv[1:] if args is None else [str(x) for x in args])]
        return super().main(args, *a, **kw)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imprinting")
def main() -> None:
    """Teach a trained image classifier new classes from one or a few images.

    \b
    imprint create model.safetensors                   an ImageNet-pretrained model, no classes
    imprint add-class model.safetensors --name cat cats/   imprint a class from a few images
    imprint predict model.safetensors photo.jpg        top-k classes with scores
    imprint info model.safetensors                     what the model knows
    imprint transfer --data-root ../shared/data        the paper's Table 3 on Flowers-102
    """


@main.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="Backbone name: efficientnet_lite0/1/2, googlenet, resnet18, resnet50, conv4, timm:<name>.")
@click.option("--dim", type=int, default=0, show_default=True,
              help="Add a fully connected layer to DIM dims before normalizing (untrained until you train it). "
                   "0 normalizes the pretrained backbone features directly, the right choice for a model you will not train.")
@click.option("--random-init", is_flag=True, help="Random backbone weights instead of pretrained ones.")
@click.option("--image-size", type=int, default=None, help="Crop size in pixels (default: the backbone's own).")
@click.option("--scale", type=float, default=10.0, show_default=True, help="Initial scale s of the cosine classifier.")
@click.option("--unknown-threshold", type=float, default=None,
              help="Predictions whose best cosine is below this are flagged unknown.")
@click.option("--from-folder", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A folder of class folders: imprint one class per sub-folder.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def create(out, backbone, dim, random_init, image_size, scale, unknown_threshold, from_folder, force):
    """Create a model file OUT from a backbone, with no classes or with the classes of a folder."""
    from imprinting import checkpoint
    from imprinting.model import create_model

    if out.exists() and not force:
        raise click.ClickException(f"{out} already exists (use --force to overwrite)")
    model = create_model(backbone, dim=dim or None, pretrained=not random_init, image_size=image_size,
                         scale=scale, unknown_threshold=unknown_threshold)
    if from_folder is not None:
        from imprinting.data.folder import read_folder

        images = read_folder(from_folder)
        by_class: dict[int, list] = {}
        for p, y in zip(images.paths, images.labels):
            by_class.setdefault(y, []).append(p)
        with _bar(len(by_class), "imprinting classes") as bar:
            for y, files in sorted(by_class.items()):
                model.imprint(images.class_names[y], files)
                bar.update(1)
    checkpoint.save(model, out)
    click.echo(f"wrote {out}: {model.config['backbone']}, {model.embedder.dim}-d embeddings, {model.num_classes} classes")


@main.command("add-class")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--name", required=True, help="The class name.")
@click.option("--augment", type=int, default=1, show_default=True,
              help="Imprint from K random crop + flip versions of each image (the paper uses 5); 1 = centre crop.")
@click.option("--append", is_flag=True, help="Add the images to an existing imprinted class instead of failing.")
def add_class(model_path, images, name, augment, append):
    """Imprint class NAME into MODEL from IMAGES (files or folders of images).

    The model file is replaced atomically only when every image was read; on any error it
    is left as it was.
    """
    from imprinting import checkpoint
    from imprinting.data.images import collect_images

    model = checkpoint.load(model_path)
    if not name.strip():
        raise click.ClickException("the class name is empty")
    if model.has_class(name) and not append:
        raise click.ClickException(f"class {name!r} already exists in {model_path} (use --append to add examples)")
    files = collect_images(images)
    embeddings = _embed_with_bar(model, files, augment)
    if model.has_class(name):
        model.add_examples(name, embeddings)
    else:
        model.add_class(name, embeddings)
    checkpoint.save(model, model_path)
    count = int(model.sums.counts[model.index_of(name)])
    click.echo(f"{name}: {count} examples; {model_path} now has {model.num_classes} classes")


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-k", "--top-k", type=int, default=5, show_default=True, help="How many classes to list per image.")
@click.option("--unknown-threshold", type=float, default=None, help="Override the model's unknown threshold.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def predict(model_path, images, top_k, unknown_threshold, as_json):
    """Print the top-k classes of each image in IMAGES (files or folders)."""
    from imprinting import checkpoint
    from imprinting.data.images import collect_images

    model = checkpoint.load(model_path)
    files = collect_images(images)
    embeddings = _embed_with_bar(model, files, 1)
    predictions = model.predict_embeddings(embeddings, top_k, unknown_threshold)
    for path, p in zip(files, predictions):
        if as_json:
            click.echo(json.dumps({"image": str(path), "unknown": p.unknown, "classes": p.classes,
                                   "probabilities": p.probabilities, "cosines": p.cosines}))
            continue
        click.echo(f"{path}" + ("  [unknown]" if p.unknown else ""))
        for rank, (c, prob, cos) in enumerate(zip(p.classes, p.probabilities, p.cosines), 1):
            click.echo(f"  {rank}. {c:<30} p={prob:.3f}  cos={cos:+.3f}")


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(model_path, as_json):
    """Describe MODEL: backbone, embedding size, scale, and each class with its example count."""
    from imprinting import checkpoint

    model = checkpoint.load(model_path)
    counts = model.sums.counts.tolist()
    classes = [{"name": n, "kind": "imprinted" if c else "base", "examples": c} for n, c in zip(model.class_names, counts)]
    scale = model.classifier.scale.detach() if hasattr(model.classifier, "scale") else None
    if scale is not None:  # one shared s, or the mean of the per-class ones
        scale = round(scale.mean().item(), 4)
    summary = {
        "file": str(model_path),
        "backbone": model.config["backbone"],
        "pretrained": model.config["pretrained"],
        "embedding_dim": model.embedder.dim,
        "classifier": model.config["classifier"],
        "scale": scale,
        "image_size": model.preprocess.image_size,
        "unknown_threshold": model.unknown_threshold,
        "num_classes": model.num_classes,
        "classes": classes,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if key != "classes":
            click.echo(f"{key}: {value}")
    for c in classes:
        click.echo(f"  {c['name']:<30} {c['kind']:<10} {c['examples']} examples")


@main.command()
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


@main.command("train")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--backbone", default="efficientnet_lite0", show_default=True, help="Pretrained backbone to start from.")
@click.option("--random-init", is_flag=True, help="Start the backbone from random weights (e.g. conv4).")
@click.option("--dim", type=int, default=64, show_default=True, help="Embedding size D (0: no FC layer).")
@click.option("--mode", type=click.Choice(["frozen", "end-to-end"]), default="frozen", show_default=True,
              help="frozen: train FC + classifier on cached backbone features (fast); end-to-end: the whole network.")
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Backbone learning rate; new layers get 10x.")
@click.option("--optimizer", type=click.Choice(["rmsprop", "sgd", "adam"]), default="rmsprop", show_default=True)
@click.option("--image-size", type=int, default=None, help="Crop size (default: the backbone's).")
@click.option("--augment", type=int, default=5, show_default=True,
              help="frozen mode: cached random crop + flip views per image used as augmentation (0: none).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Training state after each epoch; an interrupted run given the same file resumes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache", type=click.Path(path_type=Path), default=None, envvar="IMPRINTING_CACHE")
def train_command(folder, out, backbone, random_init, dim, mode, epochs, batch_size, lr, optimizer, image_size,
                  augment, checkpoint, seed, cache):
    """Train a base model on FOLDER (one sub-folder of images per class) and save it to OUT.

    The result is an ordinary model file: imprint new classes into it with add-class.
    """
    from imprinting import checkpoint as ckpt
    from imprinting.backbones import create_backbone
    from imprinting.data.features import View, cached_features
    from imprinting.data.folder import read_folder
    from imprinting.model import create_model
    from imprinting.train import FeatureDataset, ImageDataset, TrainConfig, train

    import torch

    from imprinting import distributed as dd

    images = read_folder(folder)
    torch.manual_seed(seed)  # the new layers' initial weights depend on the seed alone
    model = create_model(backbone, dim=dim or None, pretrained=not random_init, image_size=image_size,
                         class_names=images.class_names)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed)
    labels = images.labels
    if mode == "frozen":
        bb = create_backbone(backbone, pretrained=not random_init)
        bb.module = model.embedder.backbone  # the same weights the model holds
        view = View(augment, seed) if augment else View()
        feats = cached_features(bb, images, model.preprocess, view, cache)
        dataset = FeatureDataset(feats, labels)
    else:
        dataset = ImageDataset(images.paths, labels, model.preprocess)
    history = train(model, dataset, cfg, checkpoint=checkpoint)
    if not dd.is_main():  # under torchrun, rank 0 alone writes
        return
    ckpt.save(model, out)
    last = history[-1] if history else {}
    click.echo(f"wrote {out}: {model.num_classes} classes, {epochs} epochs ({mode}), "
               f"final loss {last.get('loss', float('nan')):.3f}, train top-1 {last.get('train_top1', 0):.1f}%")


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


@main.group()
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


def _embed_with_bar(model, files, views):
    import torch

    out = []
    batch = 16
    with _bar(len(files), "embedding images") as bar:
        for i in range(0, len(files), batch):
            out.append(model.embed_images(files[i : i + batch], views=views))
            bar.update(len(files[i : i + batch]))
    return torch.cat(out)


def _bar(total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img" if "images" in desc else "class",
                disable=total < 2 or not sys.stderr.isatty())


from imprinting.serve.cli import serve; main.add_command(serve)  # noqa: E402,E702
from imprinting.export_cli import export; main.add_command(export)  # noqa: E402,E702


if __name__ == "__main__":
    main()
