"""``imprint create``, ``add-class``, ``predict``, ``info`` and ``train``."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from imprinting.cli.common import (
    ClassName,
    Command,
    Finite,
    ModelFile,
    OutputFile,
    coverage_option,
    embed_with_bar,
    engine_options,
    rate_options,
    targets,
    unknown_threshold_option,
)
from imprinting.cli.evaluate import teach_and_calibrate

# imprinting.heads.HEADS (that package imports numpy); tests/test_cli_startup.py checks they match
HEADS = ("auto", "whitened", "normalized-mean")
IMAGE_SIZE = click.IntRange(8, 4096)  # pixels of the square crop


@click.command(cls=Command)
@click.argument("out", type=OutputFile())
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="Backbone name: efficientnet_lite0/1/2, googlenet, resnet18, resnet50, conv4, timm:<name>.")
@click.option("--dim", type=click.IntRange(0, 65536), default=0, show_default=True,
              help="Add a fully connected layer to DIM dims before normalizing (untrained until you train it). "
                   "0 normalizes the pretrained backbone features directly, the right choice for a model you will not train.")
@click.option("--random-init", is_flag=True, help="Random backbone weights instead of pretrained ones.")
@click.option("--image-size", type=IMAGE_SIZE, default=None, help="Crop size in pixels (default: the backbone's own).")
@click.option("--scale", type=Finite(0, 1000, min_open=True), default=10.0, show_default=True,
              help="Initial scale s of the cosine classifier.")
@unknown_threshold_option("Predictions whose best cosine is below this are flagged unknown.")
@click.option("--from-folder", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A folder of class folders: imprint one class per sub-folder.")
@click.option("--head", type=click.Choice(HEADS), default="auto", show_default=True,
              help="How classes are scored. whitened: class means whitened by the examples' shared covariance, "
                   "with a shot-count correction (imprinting.heads); normalized-mean: the paper's s * cos; auto: "
                   "whichever scores better on simulated low-shot episodes of the folder's classes (the paper's "
                   "head when there are too few to tell).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@rate_options("With --from-folder (--unknown-threshold overrides both): ")
@engine_options
def create(out, backbone, dim, random_init, image_size, scale, unknown_threshold, from_folder, head, force,
           false_reject, false_accept):
    """Create a model file OUT from a backbone, with no classes or with the classes of a folder."""
    if out.exists() and not force:
        raise click.ClickException(f"{out} already exists (use --force to overwrite)")
    if head == "whitened" and from_folder is None:
        raise click.ClickException("--head whitened is fitted on the classes of --from-folder; give one")
    target = targets(false_reject, false_accept)
    # heavy: only when the command runs
    from imprinting import checkpoint
    from imprinting.build import create_model

    power = None if head == "normalized-mean" or (head == "auto" and from_folder is None) else 0.5
    model = create_model(backbone, dim=dim or None, pretrained=not random_init, image_size=image_size,
                         scale=scale, unknown_threshold=unknown_threshold, power=power)
    report = None
    if from_folder is not None:  # the classes, the head, then the scale and unknown threshold by leave-one-out
        report = teach_and_calibrate(model, from_folder, target, set_threshold=unknown_threshold is None, head=head)
    checkpoint.save(model, out)
    chosen = model.classes.head.kind if model.classes.head is not None else "normalized-mean"
    why = f" ({report['reason']})" if report and "reason" in report else ""
    click.echo(f"wrote {out}: {model.spec.backbone}, {model.embedder.dim}-d embeddings, {model.num_classes} classes, "
               f"head {chosen}{why}")


@click.command("add-class", cls=Command)
@click.argument("model_path", metavar="MODEL", type=ModelFile())
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--name", required=True, type=ClassName(), help="The class name (1-200 printable characters).")
@click.option("--augment", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Imprint from K random crop + flip versions of each image (the paper uses 5); 1 = centre crop.")
@click.option("--append", is_flag=True, help="Add the images to an existing imprinted class instead of failing.")
@engine_options
def add_class(model_path, images, name, augment, append):
    """Imprint class NAME into MODEL from IMAGES (files or folders of images).

    The model file is replaced atomically only when every image was read; on any error it
    is left as it was.
    """
    # heavy: only when the command runs
    from imprinting import checkpoint
    from imprinting.data.images import collect_images

    model = checkpoint.load(model_path)
    if model.has_class(name) and not append:
        raise click.ClickException(f"class {name!r} already exists in {model_path} (use --append to add examples)")
    files = collect_images(images)
    embeddings = embed_with_bar(model, files, augment)
    model.imprint_embeddings(name, embeddings)
    checkpoint.save(model, model_path)
    count = model.classes.count(name)
    click.echo(f"{name}: {count} examples; {model_path} now has {model.num_classes} classes")


@click.command(cls=Command)
@click.argument("model_path", metavar="MODEL", type=ModelFile())
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many classes to list per image.")
@unknown_threshold_option("Override the model's unknown threshold.")
@coverage_option("Also print each image's prediction set: the classes it could be, holding the true class this "
                 "often (e.g. 0.9; an empty set: not one of the model's classes). Needs a calibrated model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), default=None,
              help="Also write the answers as CSV to this file (one row per image and rank; '-': print it instead).")
@engine_options
def predict(model_path, images, top_k, unknown_threshold, coverage, as_json, csv_path):
    """Print the top-k classes of each image in IMAGES (files, or folders: every image at any depth
    below), and with --coverage the set of classes each could be."""
    # heavy: only when the command runs
    from imprinting import checkpoint
    from imprinting.conformal import set_q
    from imprinting.evaluate import find_images

    model = checkpoint.load(model_path)
    set_q(model.conformal, coverage)  # a model without calibration scores: say so before the work
    files = find_images(images)
    embeddings = embed_with_bar(model, files, 1)
    predictions = model.predict_embeddings(embeddings, top_k, unknown_threshold, coverage)
    if csv_path is not None:
        handle = sys.stdout if str(csv_path) == "-" else open(csv_path, "w", newline="", encoding="utf-8")
        try:
            writer = csv.writer(handle)
            writer.writerow(["image", "unknown", "rank", "class", "probability", "cosine"]
                            + (["in_set"] if coverage is not None else []))
            for path, p in zip(files, predictions):
                for rank, (c, prob, cos) in enumerate(zip(p.classes, p.probabilities, p.cosines), 1):
                    writer.writerow([str(path), p.unknown, rank, c, f"{prob:.6f}", f"{cos:.6f}"]
                                    + ([c in p.set] if coverage is not None else []))
        finally:
            if handle is not sys.stdout:
                handle.close()
        if str(csv_path) == "-":
            return
    for path, p in zip(files, predictions):
        if as_json:
            click.echo(json.dumps({"image": str(path), "unknown": p.unknown, "classes": p.classes,
                                   "probabilities": p.probabilities, "cosines": p.cosines,
                                   **({"set": p.set} if coverage is not None else {})}))
            continue
        click.echo(f"{path}" + ("  [unknown]" if p.unknown else ""))
        for rank, (c, prob, cos) in enumerate(zip(p.classes, p.probabilities, p.cosines), 1):
            click.echo(f"  {rank}. {c:<30} p={prob:.3f}  cos={cos:+.3f}")
        if coverage is not None:
            shown = ", ".join(p.set[:10]) + (f" and {len(p.set) - 10} more" if len(p.set) > 10 else "")
            click.echo(f"  could be ({100 * coverage:g} % sets): {shown or 'not one of my classes'}")


@click.command(cls=Command)
@click.argument("model_path", metavar="MODEL", type=ModelFile())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@engine_options
def info(model_path, as_json):
    """Describe MODEL: backbone, embedding size, scale, and each class with its example count."""
    from imprinting import checkpoint  # heavy: only when the command runs

    model = checkpoint.load(model_path)
    engine = model.frozen_engine() if model.spec.backbone else None  # None: takes cached features
    choice = getattr(engine, "choice", None)  # auto: the engine per batch size and the figures behind it
    by_batch = {"measured": choice.date, "rows": choice.rows()} if choice is not None else None
    c = model.conformal  # the calibration's scores: for how many examples, and still for these classes?
    calibration = None if c is None else {  # follows: recomputed after class changes (calibration_set)
        "examples": c.n, "follows": model.classes.calibration is not None, "stale": c.stale_for(model.class_names)}
    summary = {"file": str(model_path), **model.describe(), "calibration": calibration,
               "engine": engine.describe() if engine is not None else None, "engine_by_batch": by_batch}
    classes = summary["classes"]
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if key == "engine_by_batch" and value is not None:
            click.echo(f"engine by batch size (auto, measured {value['measured']}; images/s of each exact engine):")
            for row in value["rows"]:
                rates = "  ".join(f"{n} {r:g}" for n, r in row["images_per_s"].items())
                click.echo(f"  {row['batches']:<11} {row['engine']:<12} at {row['measured_at']}: {rates}")
        elif key != "classes":
            click.echo(f"{key}: {value}")
    for c in classes:
        click.echo(f"  {c['name']:<30} {c['kind']:<10} {c['examples']} examples")


@click.command("train", cls=Command)
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=OutputFile())
@click.option("--backbone", default="efficientnet_lite0", show_default=True, help="Pretrained backbone to start from.")
@click.option("--random-init", is_flag=True, help="Start the backbone from random weights (e.g. conv4).")
@click.option("--dim", type=click.IntRange(0, 65536), default=64, show_default=True,
              help="Embedding size D (0: no FC layer).")
@click.option("--mode", type=click.Choice(["frozen", "end-to-end"]), default="frozen", show_default=True,
              help="frozen: train FC + classifier on cached backbone features (fast); end-to-end: the whole network.")
@click.option("--epochs", type=click.IntRange(0, 100000), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 65536), default=64, show_default=True)
@click.option("--lr", type=Finite(0, 10, min_open=True), default=1e-4, show_default=True,
              help="Backbone learning rate; new layers get 10x.")
@click.option("--optimizer", type=click.Choice(["rmsprop", "sgd", "adam"]), default="rmsprop", show_default=True)
@click.option("--image-size", type=IMAGE_SIZE, default=None, help="Crop size (default: the backbone's).")
@click.option("--augment", type=click.IntRange(0, 100), default=5, show_default=True,
              help="frozen mode: cached random crop + flip views per image used as augmentation (0: none).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Training state after each epoch; an interrupted run given the same file resumes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache", type=click.Path(path_type=Path), default=None, envvar="IMPRINTING_CACHE")
@click.option("--head", type=click.Choice(HEADS), default="normalized-mean",
              show_default=True,
              help="How classes are scored after training (whitened and auto turn the trained classes into "
                   "imprinted ones, which then take examples and can be removed). whitened: class means of the training embeddings, "
                   "whitened by their shared covariance (imprinting.heads); normalized-mean: the trained cosine "
                   "classifier (the paper); auto: whichever scores better on simulated low-shot episodes of the "
                   "training classes.")
@engine_options
def train_command(folder, out, backbone, random_init, dim, mode, epochs, batch_size, lr, optimizer, image_size,
                  augment, checkpoint, seed, cache, head):
    """Train a base model on FOLDER (one sub-folder of images per class) and save it to OUT.

    The result is an ordinary model file: imprint new classes into it with add-class.
    """
    # heavy: only when the command runs
    import torch

    from imprinting import checkpoint as ckpt
    from imprinting import distributed as dd
    from imprinting.build import create_model
    from imprinting.data.features import View, cached_features
    from imprinting.data.folder import read_folder
    from imprinting.train import FeatureDataset, ImageDataset, TrainConfig, train

    images = read_folder(folder)
    torch.manual_seed(seed)  # the new layers' initial weights depend on the seed alone
    model = create_model(backbone, dim=dim or None, pretrained=not random_init, image_size=image_size,
                         class_names=images.class_names)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed)
    labels = images.labels
    if mode == "frozen":
        view = View(augment, seed) if augment else View()
        feats = cached_features(model.backbone, images, model.preprocess, view, cache)
        dataset = FeatureDataset(feats, labels)
    else:
        dataset = ImageDataset(images.paths, labels, model.preprocess)
    history = train(model, dataset, cfg, checkpoint=checkpoint)
    if not dd.is_main():  # under torchrun, rank 0 alone writes
        return
    report = {"head": "normalized-mean"}
    if head != "normalized-mean":
        from imprinting.imprint import fit_trained_head  # heavy: only when the command runs

        model.eval()
        centre_crops = feats if mode == "frozen" and not augment else \
            cached_features(model.backbone, images, model.preprocess, View(), cache)  # one example per image
        report = fit_trained_head(model, centre_crops, labels, head, seed)
    ckpt.save(model, out)
    last = history[-1] if history else {}
    click.echo(f"wrote {out}: {model.num_classes} classes, {epochs} epochs ({mode}), "
               f"final loss {last.get('loss', float('nan')):.3f}, train top-1 {last.get('train_top1', 0):.1f}%, "
               f"head {report['head']}" + (f" ({report['reason']})" if "reason" in report else ""))

