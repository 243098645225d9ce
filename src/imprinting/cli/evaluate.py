"""``imprint evaluate`` (accuracy on a labelled folder) and ``imprint calibrate`` (the scale
and the unknown threshold from labelled images)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from imprinting.cli.common import (
    Command,
    coverage_option,
    embed_with_bar,
    engine_options,
    progress_bar,
    rate_options,
    targets,
    unknown_threshold_option,
)
from imprinting.data import DatasetError


@click.command(cls=Command)
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-k", "--top-k", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Also report top-k accuracy for this k.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for summary.json, per_class.csv, predictions.csv and confusion.png "
                   "[default: evaluation-<FOLDER name>].")
@unknown_threshold_option("Override the model's unknown threshold.")
@coverage_option("Also score prediction sets at this coverage: how often they hold the true class, their mean "
                 "size, how often they are one class [default: 0.9 for a model calibrated with sets].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@engine_options
def evaluate(model_path, folder, top_k, out, unknown_threshold, coverage, as_json):
    """Score MODEL on FOLDER: one sub-folder per class (named as the model's class), images
    at any depth below each. Prints top-1, top-k, the worst classes and the most confused
    pairs; writes the CSV, JSON, a confusion-matrix PNG and the risk-coverage curve (accuracy of the
    photos accepted, by best cosine, against the share accepted)."""
    # heavy: only when the command runs
    from imprinting import checkpoint
    from imprinting.evaluate import evaluate as run

    model = checkpoint.load(model_path)
    if coverage is None and model.conformal is not None:
        coverage = 0.9
    result = run(model, folder, top_k, unknown_threshold, embed=lambda files: embed_with_bar(model, files, 1),
                 coverage=coverage)
    out = out or Path(f"evaluation-{Path(folder).resolve().name}")
    files = result.write(out)
    if as_json:
        click.echo(json.dumps({**result.summary(), "files": {k: str(v) for k, v in files.items()}}, indent=2))
        return
    n = len(result.images)
    click.echo(f"{n} images, {len(result.recall)} classes")
    click.echo(f"top-1 {100 * result.top1:.2f} %   top-{result.k} {100 * result.topk:.2f} %   "
               f"flagged unknown {100 * result.unknown_rate:.1f} %")
    click.echo(f"mean probability of the best class {100 * result.confidence:.1f} %   "
               f"calibration error (ECE) {100 * result.ece:.1f} %")
    if result.sets is not None:
        s = result.sets
        click.echo(f"prediction sets for {100 * s['target']:g} %: hold the true class {100 * s['coverage']:.1f} %   "
                   f"mean size {s['mean_size']:.2f}   one class {100 * s['single']:.1f} %   "
                   f"empty {100 * s['empty']:.1f} %")
    worst = sorted(result.recall.items(), key=lambda kv: (kv[1], kv[0]))[:10]
    click.echo("lowest recall:")
    for name, r in worst:
        click.echo(f"  {name:<30} {100 * r:6.1f} %  ({result.support[name]} images)")
    if result.confused:
        click.echo("most confused (true -> predicted):")
        for c in result.confused:
            click.echo(f"  {c['true']} -> {c['predicted']}: {c['count']} ({100 * c['share']:.0f} % of {c['true']})")
    click.echo(f"wrote {', '.join(str(p) for p in files.values())}")


def describe_calibration(c) -> str:
    """The scale and the NLL before and after; the unknown threshold with its two error rates
    (the one guaranteed and the one estimated), or why there is none."""
    if c.nll_after is None:
        line = f"scale kept at {c.scale:.2f} (no class has two examples to leave one out)"
    else:
        line = (f"scale {c.scale_before:.2f} -> {c.scale:.2f} (NLL {c.nll_before:.3f} -> {c.nll_after:.3f} "
                f"on {c.scored} {c.method} examples)")
    accept = "" if c.false_accept is None else f"{100 * c.false_accept:.0f} %"
    if c.unknown_threshold is None:
        return line + f"\nno unknown threshold: {c.note or 'nothing to calibrate it from'}"
    line += f"\nunknown below cosine {c.unknown_threshold:.3f}: "
    if c.target_false_reject is not None:
        line += (f"false reject at most {100 * c.target_false_reject:g} % (guaranteed), false accept about "
                 f"{accept or '?'} (estimated: each example's class left out)")
    else:
        line += (f"false accept about {100 * c.target_false_accept:g} % (estimated), false reject "
                 f"{100 * (c.false_reject or 0):.0f} % of the examples (not guaranteed)")
    return line


def teach_and_calibrate(model, folder, target: dict, set_threshold: bool, head: str | None = None):
    """``create --from-folder``: ``imprinting.imprint.imprint_folder`` (one progress bar over the
    images; the ``head`` fitted on them, None: the paper's), then the scale (a head's
    temperature) and the unknown threshold calibrated by leave-one-out over those examples.
    Returns what the head choice measured (or None)."""
    # heavy: only when the command runs
    from imprinting.calibration import calibrate
    from imprinting.data.folder import read_folder
    from imprinting.imprint import imprint_folder

    images = read_folder(folder)
    with progress_bar(len(images.paths), "embedding images") as bar:
        taught = imprint_folder(model, images, progress=bar.update, head=head)
    names = [taught["classes"][y] for y in taught["labels"]]
    result = calibrate(model, taught["embeddings"], names, "leave-one-out", set_threshold=set_threshold, **target)
    click.echo(describe_calibration(result))
    report_suspects(model, images.paths, taught["embeddings"], names, result.scale)
    return taught["head"]


def report_suspects(model, paths, embeddings, names, scale: float) -> None:
    """One line per taught photo that looks taught to the wrong class (``imprinting.suspects``:
    its class's leave-one-out probability under 0.1, another class the most probable)."""
    # heavy: only when the command runs
    import numpy as np

    from imprinting.suspects import find_suspects, leave_one_out_probabilities

    table = model.classes
    e = embeddings.numpy() if hasattr(embeddings, "numpy") else np.asarray(embeddings)
    probabilities, scored = leave_one_out_probabilities(table, e, names, scale)
    labels = np.array([table.index_of(n) for n in names])
    for s in find_suspects(probabilities, labels, scored):
        click.echo(f'{paths[s.index]} looks like "{table.name_at(s.looks_like)}" (p {s.probability:.2f}), '
                   f'taught as "{table.name_at(s.label)}": check it')


@click.command("calibrate", cls=Command)
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(["auto", "leave-one-out", "held-out"]), default="auto", show_default=True,
              help="leave-one-out: FOLDER holds exactly the examples the classes were taught from; held-out: "
                   "images never taught; auto: leave-one-out when FOLDER's images sum to the classes' examples.")
@rate_options()
@click.option("--keep-threshold", is_flag=True, help="Fit the scale (and the prediction sets) only; keep the "
                                                      "model's unknown threshold.")
@engine_options
def calibrate_command(model_path, folder, method, false_reject, false_accept, keep_threshold):
    """Fit MODEL's scale (so probabilities mean what they say) and its unknown threshold from
    FOLDER (one sub-folder per class, named as the model's class, images at any depth), and
    save MODEL (atomically)."""
    # heavy: only when the command runs
    from imprinting import checkpoint
    from imprinting.calibration import CalibrationError, calibrate
    from imprinting.evaluate import read_tree

    target = targets(false_reject, false_accept)
    model = checkpoint.load(model_path)
    data = read_tree(folder)
    missing = [n for n in data.class_names if not model.has_class(n)]
    if missing:
        raise DatasetError(f"{folder}: class folder {missing[0]!r} names no class of the model")
    embeddings = embed_with_bar(model, data.paths, 1)
    names = [data.class_names[y] for y in data.labels]
    if method == "auto":
        try:
            result = calibrate(model, embeddings, names, "leave-one-out", set_threshold=not keep_threshold, **target)
        except CalibrationError:
            result = calibrate(model, embeddings, names, "held-out", set_threshold=not keep_threshold, **target)
    else:
        result = calibrate(model, embeddings, names, method, set_threshold=not keep_threshold, **target)
    checkpoint.save(model, model_path)
    click.echo(describe_calibration(result))
    click.echo(f"wrote {model_path}")
