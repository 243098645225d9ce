"""What an experiment is (``Experiment``, ``Plan``, ``option``: see ``imprinting.experiments``), in
its own module, so that each experiment's module imports it without importing the registry of
every experiment."""

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
