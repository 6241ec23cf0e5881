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


@pytest.fixture
def padding():
    """`padding(n, valid)`: a (B, n) mask, True = padding, with `valid[b]` valid tokens at the front of row b."""

    def mask(n: int, valid: list[int]) -> torch.Tensor:
        return torch.arange(n)[None, :] >= torch.tensor(valid)[:, None]  # (B, n)

    return mask
