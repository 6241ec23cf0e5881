"""Shared pytest fixtures: deterministic seeds, no network telemetry, a throwaway tracking store."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
torch.set_num_threads(1)  # tests use tiny tensors: one thread avoids OpenMP overhead (subprocesses keep the default)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(42)
    yield


@pytest.fixture(autouse=True)
def _isolated_tracking_uri():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; keep one test's store out of the next."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="session")
def cifar_args(tmp_path_factory) -> list[str]:
    """The arguments of a tiny cifar10 run on synthetic data (4 images per class: 36 train, 4 val, 20 test)."""
    from tasks.cifar import Cifar10
    from tasks.synthetic_cifar import write_synthetic_cifar

    root = tmp_path_factory.mktemp("data")
    write_synthetic_cifar(root / Cifar10.folder, Cifar10, train_per_class=4, test_per_class=2)
    return ["task=cifar10", "attention=softmax", "model.dim=16", "model.depth=1", "model.num_heads=2",
            "tracking.system_metrics=false", f"data.root={root}"]


@pytest.fixture(scope="session")
def new_store(tmp_path_factory):
    """`new_store(folder)` puts an empty MLflow SQLite store at folder/mlflow.db, copied from one created once
    per session (creating a store runs MLflow's schema migrations: seconds each time)."""
    import shutil

    from mlflow.tracking import MlflowClient

    template = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()

    def put(folder):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"

    return put


@pytest.fixture
def padding():
    """`padding(n, valid)`: a (B, n) mask, True = padding, with `valid[b]` valid tokens at the front of row b."""

    def mask(n: int, valid: list[int]) -> torch.Tensor:
        return torch.arange(n)[None, :] >= torch.tensor(valid)[:, None]  # (B, n)

    return mask
