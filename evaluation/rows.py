"""From tracked runs to report rows: one row per (task, attention, pooling, model, experiment, setting), its
runs one per seed, their test metrics aggregated as mean ± sample std over the seeds.

A run's identity comes from its tags; its *setting* is the rest of its configuration (its params) minus what
only says where and how it ran (paths, device, logging). Two runs that differ in a setting (say
`trainer.epochs`) never share a row, and the keys that tell rows apart are shown beside them, so a table
never silently compares unequal budgets.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from itertools import combinations

from .store import UNSET

IDENTITY = ("task", "attention", "pooling", "model", "experiment")
# params that say where or how a run ran, not what was trained (or that the identity tags already show)
RUNTIME_KEYS = {"seed", "resume", "device", "output_dir", "run_name", "experiment", "task.name", "attention.name",
                "pooling.name", "model.name", "model.num_parameters", "trainer.num_workers", "trainer.log_every"}
RUNTIME_SECTIONS = ("data.", "tracking.")
COMPONENT_SECTIONS = ("attention", "pooling", "model")  # their options only compare between equal choices


def setting_of(params: dict[str, str]) -> dict[str, str]:
    """The params that say what was trained (flattened config keys, values as MLflow stores them)."""
    return {key: value for key, value in params.items()
            if key not in RUNTIME_KEYS and not key.startswith(RUNTIME_SECTIONS)}


@dataclass
class RunRecord:
    """What the report needs of one tracked run (built from an MLflow Run by `from_mlflow`)."""
    run_id: str
    run_name: str
    status: str
    start_time: int  # ms since the epoch
    end_time: int | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # latest value of each metric

    @classmethod
    def from_mlflow(cls, run) -> RunRecord:
        return cls(run.info.run_id, run.info.run_name, run.info.status, run.info.start_time, run.info.end_time,
                   dict(run.data.tags), dict(run.data.params), dict(run.data.metrics))

    @property
    def identity(self) -> tuple[str, ...]:
        return tuple(self.tags.get(key, UNSET) for key in IDENTITY)

    @property
    def seed(self) -> str:
        return self.tags.get("seed", self.params.get("seed", "?"))

    @property
    def setting(self) -> dict[str, str]:
        return setting_of(self.params)

    def test_metrics_missing(self, names: list[str]) -> list[str]:
        return [name for name in names if f"test/{name}" not in self.metrics]


@dataclass
class Row:
    identity: tuple[str, ...]  # IDENTITY values
    setting: dict[str, str]
    runs: list[RunRecord] = field(default_factory=list)  # one per seed, seeds ascending
    label: dict[str, str] = field(default_factory=dict)  # the setting keys that tell this row from others

    def __getattr__(self, name: str) -> str:
        if name in IDENTITY:
            return self.identity[IDENTITY.index(name)]
        raise AttributeError(name)

    def values(self, metric: str) -> list[float]:
        return [run.metrics[metric] for run in self.runs if metric in run.metrics]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not values:
        return math.nan, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def setting_key(run: RunRecord) -> tuple:
    return run.identity, tuple(sorted(run.setting.items()))


def group_rows(runs: list[RunRecord]) -> list[Row]:
    """Rows of complete runs (callers pass newest first): the newest run per (row, seed) is kept."""
    rows: dict[tuple, Row] = {}
    for run in runs:
        key = setting_key(run)
        row = rows.setdefault(key, Row(run.identity, run.setting))
        if all(kept.seed != run.seed for kept in row.runs):
            row.runs.append(run)
    for row in rows.values():
        row.runs.sort(key=lambda run: (len(run.seed), run.seed))
    ordered = sorted(rows.values(), key=lambda row: (row.identity, sorted(row.setting.items())))
    label_rows(ordered)
    return ordered


def comparable(key: str, a: Row, b: Row) -> bool:
    """A component's option (`attention.eps`) only means the same thing when both rows chose that component."""
    section = key.split(".", 1)[0]
    return section not in COMPONENT_SECTIONS or getattr(a, section) == getattr(b, section)


def label_rows(rows: list[Row]) -> None:
    """Set each row's `label`: its values of the setting keys that differ between comparable rows of its task."""
    varying: dict[str, set[str]] = {}
    for a, b in combinations(rows, 2):
        if a.task != b.task:
            continue
        for key in set(a.setting) | set(b.setting):
            if a.setting.get(key) != b.setting.get(key) and comparable(key, a, b):
                varying.setdefault(a.task, set()).add(key)
    for row in rows:
        row.label = {key: row.setting.get(key, "-") for key in sorted(varying.get(row.task, ()))}
