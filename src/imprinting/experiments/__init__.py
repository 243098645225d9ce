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

from imprinting.experiments import (
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
from imprinting.experiments.base import Experiment, Plan, option

REGISTRY: dict[str, Experiment] = {
    m.EXPERIMENT.name: m.EXPERIMENT
    for m in (tables_1_2, table3, fig5, fig6, fig7, beyond, e2e, omniglot, transfer)
}

__all__ = ["REGISTRY", "Experiment", "Plan", "option"]
