"""The README's Python example runs as written (from the repository root)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs_as_written(shared_data, tmp_path):
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    # run where the README's reader stands (a checkout with ../shared beside it), but in a
    # temporary folder, so that the file it saves never lands in the repository
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    script = checkout / "example.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    result = subprocess.run([sys.executable, str(script)], cwd=checkout, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    classes = eval(result.stdout.strip().splitlines()[-1].split("]")[0] + "]")
    assert classes[0] == "Bobolink"  # a held-out Bobolink picture is recognised
    assert (checkout / "birds.safetensors").is_file() and not (REPO / "birds.safetensors").exists()
