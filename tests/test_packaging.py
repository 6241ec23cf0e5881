"""The installed project works from any folder: `python -m bench.parity` run outside the checkout failed with
"No module named 'evaluation'" (the package list in pyproject.toml predated evaluation/ and left out train.py,
which evaluation/ and bench/ import)."""
from __future__ import annotations

import subprocess
import sys


def test_every_top_level_package_and_the_entry_point_import_outside_the_checkout(tmp_path):
    code = "import attention, backbones, tasks, lab, bench.parity, evaluation.sweep, train"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
