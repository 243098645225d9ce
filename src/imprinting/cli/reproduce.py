"""``imprint transfer`` and ``imprint reproduce``: the paper's tables and figures, one command
per experiment of ``imprinting.experiments.REGISTRY``.

The registry imports PyTorch (its experiments import ``protocol`` and ``train`` at module
level), so the commands are built from it on first use: ``transfer`` when this module's
attribute is read, those of ``reproduce`` when the group lists or runs one. ``imprint
--help`` lists both without importing it."""

from __future__ import annotations

from pathlib import Path

import click

from imprinting.cli import common
from imprinting.cli.common import Command, engine_options


def _shared_options(defaults: dict) -> list:
    """The options every ``imprint reproduce`` command on a data set's features shares;
    ``defaults`` overrides some defaults (end-to-end runs want fewer shots, draws and epochs)."""
    d = {"image_size": None, "augment": 5, "shots": (1, 2, 5, 10, 20), "draws": 5, "epochs": 20, **defaults}
    return [
        click.Option(["--dataset"], type=click.Choice(["cub", "flowers102", "inaturalist"]), default="cub",
                     show_default=True, help="Data set, in its standard layout under the data root."),
        click.Option(["--data-root"], type=click.Path(path_type=Path), default=None, envvar="IMPRINTING_DATA",
                     help="Folder holding cub/, flowers102/, omniglot/ (env IMPRINTING_DATA)."),
        click.Option(["--backbone"], default="efficientnet_lite0", show_default=True,
                     help="ImageNet-pretrained backbone."),
        click.Option(["--image-size"], type=int, default=d["image_size"], show_default=d["image_size"] is not None,
                     help="Crop size." if d["image_size"] else "Crop size (default: the backbone's, 224)."),
        click.Option(["--augment"], type=int, default=d["augment"], show_default=True,
                     help="Cached random crop + flip views per training image (Imprinting+Aug, training)."),
        click.Option(["--shots", "-n"], type=int, multiple=True, default=d["shots"], show_default=True),
        click.Option(["--draws"], type=int, default=d["draws"], show_default=True),
        click.Option(["--seed"], type=int, default=0, show_default=True),
        click.Option(["--epochs"], type=int, default=d["epochs"], show_default=True,
                     help=d.get("epochs_help", "Base training and fine-tuning epochs.")),
        click.Option(["--dim"], type=int, default=64, show_default=True, help="Embedding size D."),
        click.Option(["--cache"], type=click.Path(path_type=Path), default=None, envvar="IMPRINTING_CACHE",
                     help="Feature cache folder (env IMPRINTING_CACHE)."),
        click.Option(["--out"], type=click.Path(path_type=Path), default=None,
                     help="Output folder (default results/<dataset>)."),
        click.Option(["--limit-classes"], type=int, default=None,
                     help="Keep only the first K base and K novel classes (a quick smoke run)."),
    ]


def _option(flags: tuple, attrs: dict) -> click.Option:
    """An experiment's option (plain data) as a click option; ``type`` "path" / "file": a Path."""
    attrs = dict(attrs)
    if attrs.get("type") == "path":
        attrs["type"] = click.Path(path_type=Path)
    elif attrs.get("type") == "file":
        attrs["type"] = click.Path(dir_okay=False, path_type=Path)
    return click.Option(list(flags), **attrs)


def command(experiment, name: str | None = None) -> click.Command:
    """The command that runs ``experiment`` (an ``experiments.Experiment``) and prints its
    table (and what it adds)."""

    def callback(**options):
        # heavy: only when the command runs
        from imprinting import report
        from imprinting.experiments.runner import run

        if common.COMMAND_LINE is not None:
            report.COMMAND = common.COMMAND_LINE  # the command line heads every table written
        r = run(experiment, options)
        click.echo(r.path.read_text())
        for line in r.messages:
            click.echo(line)

    params = _shared_options(experiment.defaults) if experiment.shared_options else []
    params += [_option(flags, attrs) for flags, attrs in experiment.options]
    # --engine / --precision of the frozen backbone
    return engine_options(Command(name or experiment.name, callback=callback, params=params, help=experiment.help))


class ExperimentGroup(click.Group):
    """A group whose commands are those of the registry's experiments (but ``transfer``),
    built when they are first listed or looked up."""

    _built = False

    @property
    def commands(self) -> dict[str, click.Command]:
        if not self._built:
            self._built = True
            # heavy (imports torch): only when listed or run
            from imprinting.experiments import REGISTRY

            for name, experiment in REGISTRY.items():
                if name != "transfer":
                    self._commands[name] = command(experiment)
        return self._commands

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._commands = value


@click.group(cls=ExperimentGroup)
def reproduce():
    """The paper's tables and figures, written under results/<dataset>/ with their command.

    Frozen-backbone mode: ImageNet-pretrained backbone features are computed once, cached,
    and shared by every method, draw and shot count. Base/novel split by the data set's rule
    (CUB: class id <= 100 is base; Flowers-102: class <= 51; iNaturalist: >= 100 training
    images). Omniglot has its own command (the small ConvNet trained from scratch).
    """


def __getattr__(name: str):
    if name == "transfer":  # `imprint transfer`, built on first use (see the module's help)
        # heavy (imports torch): only when transfer is used
        from imprinting.experiments import REGISTRY

        globals()["transfer"] = value = command(REGISTRY["transfer"])
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
