"""The ``imprint`` command. Thin: every subcommand calls the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from imprinting.backbones import BackboneError
from imprinting.checkpoint import CheckpointError
from imprinting.data import DatasetError
from imprinting.data.images import ImageError
from imprinting.model import UnknownClassError

USER_ERRORS = (ImageError, CheckpointError, DatasetError, BackboneError, UnknownClassError, ValueError)


class _Group(click.Group):
    """Turns the library's user-facing errors into one line and exit status 1."""

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
    summary = {
        "file": str(model_path),
        "backbone": model.config["backbone"],
        "pretrained": model.config["pretrained"],
        "embedding_dim": model.embedder.dim,
        "classifier": model.config["classifier"],
        "scale": None if scale is None else [round(v, 4) for v in scale.tolist()][:1],
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
def transfer(data_root, backbone, shots, draws, seed, image_size, augment, cache, out):
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


if __name__ == "__main__":
    main()
