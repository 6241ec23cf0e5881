"""What tests of whole `train.py` runs share: where a run writes, and what "nothing was written" means."""
from __future__ import annotations

from pathlib import Path

import torch


def outputs_in(tmp: Path) -> list[str]:
    """Send the run's checkpoints and tracking store to `tmp`, where the tests look for them."""
    return [f"output_dir={tmp}/runs", f"tracking.uri=sqlite:///{tmp}/mlflow.db"]


def assert_one_line_exit_2_and_nothing_written(code: int, err: str, tmp: Path, *expected: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(text in lines[0] for text in expected), lines[0]
    assert not (tmp / "runs").exists() and not (tmp / "mlflow.db").exists()


def mlflow_runs(store: str, experiment: str = "cifar10") -> list:
    """The runs of `experiment` in the tracking store `store` (a URI), newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def checkpoints(tmp: Path) -> list[Path]:
    return sorted((tmp / "runs").glob("*/*/*.pt"))


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
