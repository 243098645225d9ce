"""Results as files, each headed by how it was made: provenance here, tables (Markdown, CSV,
JSON) in ``report.tables``, plots (PNG) in ``report.plots``."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from imprinting.engines import used
from imprinting.machine import cpu_name

# The command line, set by the `imprint` command (see cli._Group.main); else sys.argv is used.
COMMAND: list[str] | None = None


def provenance(command: list[str] | None = None, **extra) -> dict:
    """The command, machine and date behind a result, plus anything in ``extra`` (seed, data...)."""
    cmd = command or COMMAND or [Path(sys.argv[0]).name, *sys.argv[1:]]
    engine = {"engine": used()} if used() else {}  # what ran the frozen backbone, when anything did
    return {
        "command": shlex.join(cmd),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores ({cpu_name()})"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **engine,
        **extra,
    }


from imprinting.report.tables import markdown_table, write_tables  # noqa: E402

__all__ = ["COMMAND", "cpu_name", "markdown_table", "provenance", "write_tables"]
