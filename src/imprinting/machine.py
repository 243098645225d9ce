"""The machine a figure was measured on, in words (results, the engines' cache of choices). A leaf
module: engines and reports both import it."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
