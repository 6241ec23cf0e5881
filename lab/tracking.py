"""MLflow tracking: one experiment per task, one run per training run (named by `Config.run_name`).

The default store is MLflow's own `sqlite:///mlflow.db` in the project root; `MLFLOW_TRACKING_URI`
wins when set (a shared team server). Only rank 0 talks to MLflow; other ranks get a no-op tracker.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from .config import PROJECT_ROOT, Config

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # the store `make ui` serves unless MLFLOW_TRACKING_URI is set


def resolve_tracking_uri(configured: str) -> str:
    """MLFLOW_TRACKING_URI if set; else the configured URI with relative sqlite paths made absolute
    against the project root (so runs land in one store whatever the working directory)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str((PROJECT_ROOT / uri[len(prefix):]).resolve())
    return uri


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite database (not in the cwd); else the server's."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / experiment).as_uri()
    return None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """Thin wrapper over the MLflow fluent API for one run (new or resumed)."""

    def __init__(self, cfg: Config, run_id: str | None, enabled: bool = True):
        self.enabled = enabled
        self.run_id = run_id
        if not enabled:
            return
        import mlflow

        self.mlflow = mlflow
        self._user_uri = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri exports it; restored in end()
        uri = resolve_tracking_uri(cfg.tracking.uri)
        mlflow.set_tracking_uri(uri)
        experiment = cfg.tracking.experiment or cfg.task.name
        if mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment, artifact_location=artifact_location(uri, experiment))
        mlflow.set_experiment(experiment)
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else cfg.run_name,
                               log_system_metrics=cfg.tracking.system_metrics)
        self.run_id = run.info.run_id
        self.uri = uri
        self.experiment_id = run.info.experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled:
            existing = self.mlflow.get_run(self.run_id).data.params
            changed = {k: v for k, v in params.items() if k in existing and existing[k] != str(v)}
            fresh = {k: v for k, v in params.items() if k not in existing}
            if fresh:
                self.mlflow.log_params(fresh)
            for key, value in changed.items():  # params are immutable in MLflow: record changes as tags
                self.mlflow.set_tag(f"resumed_with.{key}", str(value))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled:
            self.mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled and metrics:
            self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_figure(self, figure, name: str) -> None:
        if self.enabled:
            self.mlflow.log_figure(figure, name)
        import matplotlib.pyplot as plt

        plt.close(figure)

    def log_text(self, text: str, name: str) -> None:
        if self.enabled:
            self.mlflow.log_text(text, name)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        if self.enabled:
            self.mlflow.log_artifact(str(path), folder)

    def end(self, status: str = "FINISHED") -> None:
        if not self.enabled:
            return
        if self.mlflow.active_run() is not None:
            self.mlflow.end_run(status=status)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if self._user_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = self._user_uri

    def ui_hint(self) -> str:
        if not self.enabled:
            return ""
        if self.uri == resolve_tracking_uri(DEFAULT_TRACKING_URI):
            where = "run `make ui` and open http://127.0.0.1:5000"
        elif self.uri.startswith("sqlite:///"):
            where = f"run `make ui MLFLOW_TRACKING_URI={self.uri}` and open http://127.0.0.1:5000"
        else:
            where = f"open {self.uri}"
        page = f"#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"MLflow run {self.run_id} (experiment {self.experiment_id}): {where}/{page}"
