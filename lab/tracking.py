"""MLflow tracking: one experiment per task, one run per training run (named by `Config.run_name`).

The default store is MLflow's own `sqlite:///mlflow.db` in the project root; `MLFLOW_TRACKING_URI`
wins when set (a shared team server, `make server`). Only rank 0 talks to MLflow; other ranks get a
no-op tracker. `check_store` is the quick, bounded look at the store that runs before anything else
(MLflow's own client retries an unreachable server for minutes).
"""
from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import PROJECT_ROOT, Config
from .registry import ConfigError

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


STORE_TIMEOUT = 5.0  # seconds the tracking store has to answer the start-up check
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
SQLITE_HEADER = b"SQLite format 3\x00"


def check_store(uri: str, timeout: float = STORE_TIMEOUT) -> None:
    """Raise ConfigError (one line naming `uri`) unless the tracking store can be used; creates nothing.

    http(s): the server must answer a request (any HTTP status counts as an answer); a database URL: its
    host must accept a connection; sqlite: an existing file must be a SQLite database, and no file may
    stand where its folder would be created. Other schemes are left to MLflow."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    fix = "start it (`make server`), or point MLFLOW_TRACKING_URI / tracking.uri at a store that is up"
    if scheme in ("http", "https"):
        insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
        context = ssl._create_unverified_context() if insecure and scheme == "https" else None
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout, context=context).close()
        except urllib.error.HTTPError:
            return  # it answered
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ConfigError(f"the MLflow tracking server {uri} does not answer ({reason}); {fix}") from None
    elif scheme == "sqlite" and uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///"):])
        existing = next(path for path in (database, *database.parents) if path.exists())
        if existing != database and not existing.is_dir():
            raise ConfigError(f"the tracking store {uri} cannot be created: {existing} is a file")
        if existing == database:
            try:
                with open(database, "rb") as handle:
                    header = handle.read(len(SQLITE_HEADER))
            except OSError as error:
                raise ConfigError(f"the tracking store {uri} cannot be read: {error.strerror}") from None
            if header and header != SQLITE_HEADER:
                raise ConfigError(f"the tracking store {uri} is not an SQLite database")
    elif scheme in DATABASE_PORTS and parts.hostname:
        address = (parts.hostname, parts.port or DATABASE_PORTS[scheme])
        try:
            socket.create_connection(address, timeout=timeout).close()
        except OSError as error:
            reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or error)
            raise ConfigError(f"the tracking database {uri} does not answer ({reason}); {fix}") from None


@contextlib.contextmanager
def store_lock(uri: str):
    """Hold an exclusive lock beside a sqlite store while it is opened (MLflow creates and migrates its tables
    on first use: two runs starting at once on a new file otherwise fail in alembic's migration) and while an
    experiment is looked up or created. Other stores serialise themselves."""
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no lock, as before
        fcntl = None
    if fcntl is None or not uri.startswith("sqlite:///"):
        yield
        return

    database = Path(uri[len("sqlite:///"):])
    database.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would; check_store saw no file in the way
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
        self.continued_from = None  # the checkpoint's run when it is not in this store (a new run continues it)
        if not enabled:
            return
        import mlflow

        self.mlflow = mlflow
        self._user_uri = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri exports it; restored in end()
        uri = resolve_tracking_uri(cfg.tracking.uri)
        mlflow.set_tracking_uri(uri)
        experiment = self.experiment_name = cfg.tracking.experiment or cfg.task.name
        with store_lock(uri):
            if mlflow.get_experiment_by_name(experiment) is None:
                mlflow.create_experiment(experiment, artifact_location=artifact_location(uri, experiment))
            mlflow.set_experiment(experiment)
        if run_id is not None and not self._resumable(run_id):
            print(f"note: the checkpoint's MLflow run {run_id} is not in {uri}; continuing in a new run there "
                  "(tag resumed_from_run), whose metrics start at the checkpoint's step", flush=True)
            self.continued_from, run_id = run_id, None
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else cfg.run_name,
                               log_system_metrics=cfg.tracking.system_metrics)
        if self.continued_from:
            mlflow.set_tag("resumed_from_run", self.continued_from)
        self.run_id = run.info.run_id
        self.uri = uri
        self.experiment_id = run.info.experiment_id

    def _resumable(self, run_id: str) -> bool:
        """Whether `run_id` is a live run of this store's active experiment (so start_run can continue it)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.mlflow.MlflowClient().get_run(run_id)
        except MlflowException:
            return False
        experiment = self.mlflow.get_experiment_by_name(self.experiment_name)
        return run.info.lifecycle_stage == "active" and run.info.experiment_id == experiment.experiment_id

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
