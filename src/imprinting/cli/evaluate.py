"""``imprint evaluate`` (accuracy on a labelled folder) and ``imprint calibrate`` (the scale
and the unknown threshold from labelled images)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from imprinting.cli.common import embed_with_bar
from imprinting.cli.models import engine_options


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-k", "--top-k", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Also report top-k accuracy for this k.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for summary.json, per_class.csv, predictions.csv and confusion.png "
                   "[default: evaluation-<FOLDER name>].")
@click.option("--unknown-threshold", type=float, default=None, help="Override the model's unknown threshold.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@engine_options
def evaluate(model_path, folder, top_k, out, unknown_threshold, as_json):
    """Score MODEL on FOLDER: one sub-folder per class (named as the model's class), images
    at any depth below each. Prints top-1, top-k, the worst classes and the most confused
    pairs; writes the CSV, JSON and a confusion-matrix PNG."""
    from imprinting import checkpoint
    from imprinting.evaluate import evaluate as run

    model = checkpoint.load(model_path)
    result = run(model, folder, top_k, unknown_threshold, embed=lambda files: embed_with_bar(model, files, 1))
    out = out or Path(f"evaluation-{Path(folder).resolve().name}")
    files = result.write(out)
    if as_json:
        click.echo(json.dumps({**result.summary(), "files": {k: str(v) for k, v in files.items()}}, indent=2))
        return
    n = len(result.images)
    click.echo(f"{n} images, {len(result.recall)} classes")
    click.echo(f"top-1 {100 * result.top1:.2f} %   top-{result.k} {100 * result.topk:.2f} %   "
               f"flagged unknown {100 * result.unknown_rate:.1f} %")
    worst = sorted(result.recall.items(), key=lambda kv: (kv[1], kv[0]))[:10]
    click.echo("lowest recall:")
    for name, r in worst:
        click.echo(f"  {name:<30} {100 * r:6.1f} %  ({result.support[name]} images)")
    if result.confused:
        click.echo("most confused (true -> predicted):")
        for c in result.confused:
            click.echo(f"  {c['true']} -> {c['predicted']}: {c['count']} ({100 * c['share']:.0f} % of {c['true']})")
    click.echo(f"wrote {', '.join(str(p) for p in files.values())}")


COMMANDS = [evaluate]
