"""The tracking store as `make sweep` and `make eval` read it: the same URI rule as training, runs found by
tag equality across every MLflow experiment of the store."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.tracking import DEFAULT_TRACKING_URI, resolve_tracking_uri

SQLITE = "sqlite:///"
UNSET = "none"  # the value of an identity tag that does not apply (no experiment preset, no sweep)


def store_uri(configured: str = DEFAULT_TRACKING_URI) -> str:
    """MLFLOW_TRACKING_URI if set, else `configured` (relative sqlite paths against the project root)."""
    return resolve_tracking_uri(configured)


def store_exists(uri: str) -> bool:
    """False for a sqlite file that does not exist (opening it would create an empty store); True otherwise."""
    return not uri.startswith(SQLITE) or Path(uri[len(SQLITE):]).exists()


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def tag_filter(tags: dict[str, Any]) -> str:
    """An MLflow filter string requiring each tag to equal its value."""
    def quoted(value: Any) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " and ".join(f"tags.`{key}` = {quoted(value)}" for key, value in tags.items())


def find_runs(client, tags: dict[str, Any], experiment_names: list[str] | None = None) -> list:
    """Every active run whose tags equal `tags`, newest first, in the named experiments (default: all)."""
    if experiment_names is None:
        experiments = client.search_experiments()
    else:
        experiments = [e for e in map(client.get_experiment_by_name, experiment_names) if e is not None]
    if not experiments:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([e.experiment_id for e in experiments], filter_string=tag_filter(tags),
                                  order_by=["attributes.start_time DESC"], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
