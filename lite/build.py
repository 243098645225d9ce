"""Build the ``imprinting-lite`` distribution (wheel and sdist) from this repository's sources.

The modules listed in ``MODULES`` (``imprinting.lite`` and what it imports; a test checks that
the list is closed under imports) are copied with ``lite/pyproject.toml`` and ``lite/README.md``
into a staging folder, which ``python -m build`` turns into a self-contained sdist and a wheel:
one source tree, two distributions.

Usage::

    python lite/build.py                      # dist/imprinting_lite-<version>{.tar.gz,-py3-none-any.whl}
    python lite/build.py --outdir /tmp/d --no-isolation --wheel   # any `python -m build` options after --outdir
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src" / "imprinting"

# Paths under src/imprinting: the runtime and everything it imports (no torch anywhere).
MODULES = (
    "__init__.py",
    "errors.py",
    "files.py",
    "classes.py",
    "classes_head.py",
    "classes_file.py",
    "calibration.py",
    "calibration_set.py",
    "npz_members.py",
    "conformal.py",
    "rows.py",
    "heads/__init__.py",
    "heads/episodes.py",
    "heads/means.py",
    "heads/product.py",
    "heads/rule.py",
    "prediction.py",
    "data/__init__.py",
    "data/images.py",
    "lite/__init__.py",
    "lite/format.py",
    "lite/preprocess.py",
    "lite/runtime.py",
)


def stage(folder: Path) -> Path:
    """Lay out the distribution's source tree in ``folder``; returns it."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(HERE / name, folder / name)
    for module in MODULES:
        target = folder / "src" / "imprinting" / module
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SRC / module, target)
    return folder


def main(argv: list[str]) -> int:
    outdir = HERE.parent / "dist"
    if argv[:1] == ["--outdir"]:
        outdir, argv = Path(argv[1]).resolve(), argv[2:]
    with tempfile.TemporaryDirectory(prefix="imprinting-lite-") as tmp:
        folder = stage(Path(tmp))
        return subprocess.call([sys.executable, "-m", "build", str(folder), "--outdir", str(outdir), *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
