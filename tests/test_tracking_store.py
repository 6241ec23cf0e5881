"""Runs that start at the same moment on a new SQLite store: MLflow creates and migrates the tables on first
use, and two processes doing it at once made one of them fail in alembic's migration (seen running two
`make train` side by side on a fresh clone). `lab.tracking.store_lock` serialises the opening."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from run_checks import mlflow_runs

PROJECT = Path(__file__).resolve().parent.parent
OPEN_A_RUN = """
from train import load_config
from lab.tracking import Tracker
Tracker(load_config(["task=cifar10"]), None).end()
"""


def test_two_runs_opening_a_new_sqlite_store_at_once_both_start(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    starts = [subprocess.Popen([sys.executable, "-c", OPEN_A_RUN], cwd=PROJECT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [start.communicate(timeout=300)[0] for start in starts]
    assert [start.returncode for start in starts] == [0, 0, 0], "\n".join(outputs)
    assert [run.info.status for run in mlflow_runs(uri, "cifar10")] == ["FINISHED"] * 3
