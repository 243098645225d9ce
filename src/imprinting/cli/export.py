"""``imprint export``: write the ONNX export that ``imprinting.lite`` runs without PyTorch."""

from __future__ import annotations

from pathlib import Path

import click

from imprinting.cli.common import Command


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@click.command(cls=Command)
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--quantize", is_flag=True,
              help="Also write int8 graphs (onnxruntime dynamic quantization) and measure them against the float ones.")
@click.option("--check-images", multiple=True, type=click.Path(path_type=Path),
              help="Images (files or folders) to measure the int8 graphs on (repeat the option); default: random noise.")
@click.option("--classes-only", is_flag=True,
              help="Only rewrite OUT_DIR's classes file from MODEL (same embedder), e.g. after imprinting on a server.")
@click.option("--force", is_flag=True,
              help="Overwrite an existing export, including classes that may have been taught on a device.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17 or newer).")
def export(model_path, out_dir, quantize, check_images, classes_only, force, opset):
    """Export MODEL for devices without PyTorch into the folder OUT_DIR.

    \b
    embedder.onnx      image -> L2-normalized embedding (dynamic batch)
    model.onnx         image -> logits, with MODEL's classes fixed in the graph
    classes.npz        class vectors, scale, names, per-class sums: what devices imprint into
    preprocess.json    resize, crop and normalization; manifest.json: what is where
    *.int8.onnx        with --quantize

    Open OUT_DIR with imprinting.lite.load(); bring classes taught there back with
    imprinting.export.import_classes(model, OUT_DIR).
    """
    # heavy: only when the command runs
    from imprinting import checkpoint
    from imprinting.export import export as export_model
    from imprinting.export import update_classes

    model = checkpoint.load(model_path)
    if classes_only:
        path = update_classes(model, out_dir, force)
        click.echo(f"wrote {path}: {model.num_classes} classes")
        return
    images = None
    if check_images:
        from imprinting.data.images import collect_images  # heavy (PIL): only when the command runs

        images = collect_images(check_images)
    manifest = export_model(model, out_dir, quantize=quantize, overwrite=force, check_images=images, opset=opset)
    click.echo(f"wrote {out_dir}: {manifest['backbone']}, {manifest['embedding_dim']}-d embeddings, "
               f"{model.num_classes} classes")
    for key, name in manifest["files"].items():
        if key != "manifest":
            click.echo(f"  {name:<20} {_size(manifest['sizes'][key])}")
    for key, value in manifest["verify"].items():
        click.echo(f"  onnxruntime vs PyTorch, {key.replace('_', ' ')}: {value:.2e}")
    q = manifest.get("quantization")
    if q:
        line = f"  int8 vs float on {q['measured_on']}: embedding cosine mean {q['embedding_cosine_mean']:.4f}, " \
               f"min {q['embedding_cosine_min']:.4f}"
        if "top1_agreement" in q:
            line += f", top-1 agreement {100 * q['top1_agreement']:.1f}%"
        click.echo(line)
