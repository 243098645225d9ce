"""How fast ``imprint`` answers what needs no model: its help, a command's help, and the
one-line error for a model file that does not exist.

Each is run ``--runs`` times as a fresh process of the venv's Python
(``python -m imprinting.cli ...``, as the ``imprint`` script runs it); the median wall time
(process start to exit) is printed with the fastest and slowest run, the exit status, the
machine's CPU model and the date. ``--src FOLDER`` times another source tree (put first on
``PYTHONPATH``), e.g. an earlier commit checked out with ``git worktree add``, to compare
before and after on the same machine.

Usage::

    .venv/bin/python benchmarks/cli_startup.py
    .venv/bin/python benchmarks/cli_startup.py --src /tmp/before/src
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CASES = [
    ("imprint --help", ["--help"]),
    ("imprint predict --help", ["predict", "--help"]),
    ("imprint predict missing.safetensors some.jpg", ["predict", "missing.safetensors", "some.jpg"]),
]


def venv_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_once(python: str, args: list[str], env: dict, cwd: str) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run([python, "-m", "imprinting.cli", *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start, done.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each command (the median is reported)")
    ap.add_argument("--src", type=Path, default=None, help="time this source tree instead of the installed one")
    args = ap.parse_args()

    python = venv_python()
    env = dict(os.environ)
    if args.src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(args.src.resolve()), *filter(None, [env.get("PYTHONPATH")])])
    where = subprocess.run([python, "-c", "import imprinting.cli; print(imprinting.cli.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    print(f"date:   {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"CPU:    {cpu_name()} ({os.cpu_count()} cores visible, {platform.machine()})")
    print(f"python: {python} ({platform.python_version()})")
    print(f"code:   {where}")
    print(f"{'command':<48} {'median s':>9} {'min s':>7} {'max s':>7}  exit")
    with tempfile.TemporaryDirectory() as cwd:  # missing.safetensors is missing there
        for label, cli_args in CASES:
            times, codes = [], set()
            for _ in range(args.runs):
                seconds, code = run_once(python, cli_args, env, cwd)
                times.append(seconds)
                codes.add(code)
            print(f"{label:<48} {statistics.median(times):9.3f} {min(times):7.3f} {max(times):7.3f}  "
                  f"{','.join(map(str, sorted(codes)))}")


if __name__ == "__main__":
    main()
