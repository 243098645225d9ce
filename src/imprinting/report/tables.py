"""Result tables written as Markdown, CSV and JSON, each headed by its provenance."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from imprinting.files import atomic_write


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_tables(out_dir: str | os.PathLike, stem: str, title: str, rows: list[dict], columns: list[str], prov: dict) -> Path:
    """Write ``stem``.md / .csv / .json under ``out_dir``; returns the Markdown path."""
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
