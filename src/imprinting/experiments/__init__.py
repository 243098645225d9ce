"""The paper's tables and figures (and a few beyond them) as data: one small module each,
one runner (``experiments.runner``) for what they share.

An ``Experiment`` declares what it needs and does:
  - ``data``: how the runner prepares its data (``runner.SETUPS``: cached backbone features
    of a data set, the same with the backbone kept for end-to-end training, Omniglot's
    ConvNet trained from scratch, or Flowers-102 for transfer),
  - ``defaults`` / ``options``: its command-line options (``imprint reproduce <name>``),
  - ``plan(setup, options) -> Plan``: the methods to run on which episodes,
  - ``write(run) -> Path``: its tables and plots (the path returned is the table printed).
The runner prepares the data, runs the plan through ``protocol.run``, heads every file with
``report.provenance``, and calls ``write``. ``REGISTRY`` maps each command's name to its
experiment; the CLI builds its commands from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Plan:
    """What to run: ``(methods, episodes)`` stages, in order, through ``protocol.run``.

    ``info``: provenance entries of the experiment (seconds spent training its base model,
    the recipe...); a ``None`` value of ``seconds_methods`` (or ``seconds_total``) is filled
    in by the runner with the seconds the stages (or the whole command) took. ``extra``:
    whatever ``write`` needs besides the results.
    """

    stages: list[tuple[list, list]]
    info: dict = field(default_factory=dict)
    keep_scores: bool = False
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    name: str  # the command: `imprint reproduce <name>` (`imprint transfer` for "transfer")
    help: str  # the command's help; its first line is the summary
    data: str  # a key of runner.SETUPS
    plan: Callable  # (setup, options) -> Plan
    write: Callable  # (run) -> Path of the table to print
    defaults: dict = field(default_factory=dict)  # other defaults of the shared options
    options: tuple = ()  # its own options: (flags, click attributes) pairs
    shared_options: bool = True  # False: ``options`` are all its options


def option(*flags: str, **attrs) -> tuple:
    """A command-line option as data: click's flags and attributes (``type="path"``: a path)."""
    return flags, attrs


from imprinting.experiments import (  # noqa: E402
    beyond,
    e2e,
    fig5,
    fig6,
    fig7,
    omniglot,
    table3,
    tables_1_2,
    transfer,
)

REGISTRY: dict[str, Experiment] = {
    m.EXPERIMENT.name: m.EXPERIMENT
    for m in (tables_1_2, table3, fig5, fig6, fig7, beyond, e2e, omniglot, transfer)
}

__all__ = ["REGISTRY", "Experiment", "Plan", "option"]
