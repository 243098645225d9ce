"""Result tables written as Markdown, CSV and JSON, each headed by how it was made."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# The command line, set by the `imprint` command (see cli._Group.main); else sys.argv is used.
COMMAND: list[str] | None = None


def provenance(command: list[str] | None = None, **extra) -> dict:
    """The command, machine and date behind a result, plus anything in ``extra`` (seed, data...)."""
    cmd = command or COMMAND or [Path(sys.argv[0]).name, *sys.argv[1:]]
    return {
        "command": shlex.join(cmd),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores ({cpu_name()})"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **extra,
    }


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_tables(out_dir: str | os.PathLike, stem: str, title: str, rows: list[dict], columns: list[str], prov: dict) -> Path:
    """Write ``stem``.md / .csv / .json under ``out_dir``; returns the Markdown path."""
    from imprinting.files import atomic_write

    out = Path(out_dir)
    header = "\n".join(f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in prov.items())
    md = f"# {title}\n\n{header}\n\n{markdown_table(rows, columns)}\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    for suffix, text in (
        (".md", md),
        (".csv", "".join(f"# {k}: {v}\n" for k, v in prov.items()) + buf.getvalue()),
        (".json", json.dumps({"title": title, "provenance": prov, "rows": rows}, indent=2)),
    ):
        atomic_write(out / f"{stem}{suffix}", lambda tmp, text=text: Path(tmp).write_text(text))
    return out / f"{stem}.md"
