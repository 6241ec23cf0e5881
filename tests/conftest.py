"""Shared pytest fixtures: deterministic seeds, no network telemetry, a throwaway tracking store."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(42)
    yield
