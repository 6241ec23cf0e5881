"""What a task is: its data, how to build its model, its loss and its metrics.

The trainer (`train.py`) only talks to this interface. A task:

* `prepare(root, synthetic=False, download=True)` (classmethod) makes the data ready under `root`:
  download + checksum + safe extraction + preprocessing, or, with `synthetic=True`, a small learnable
  stand-in written **in the upstream on-disk format**, so the real loader reads it.
* `setup()` loads the splits; `datasets()` returns {"train", "val", "test"} map-style datasets whose
  items `collate` turns into batch dicts. Batch keys are the model's forward keyword arguments, plus
  "labels" (so `model(**inputs)` works for every backbone).
* `build_model(model, attention, pooling)` assembles the backbone from the config specs.
* `training_loss(model, batch, generator)` returns the scalar loss; random augmentation draws only
  from `generator` (seeded per step by the trainer), which makes resumed runs exact.
* `eval_step(model, batch)` returns per-example tensors (first dim = batch); the trainer concatenates
  them over the split (and across ranks) and `metrics(outputs, split)` turns them into numbers and
  figures (functions that draw them, called only for the figures logged), plus optional text artifacts
  and run tags (logged on test). Metric names are bare ("accuracy"); the trainer prefixes the split
  ("val/accuracy"). `eval_step_for(split)` picks the step per split (the same `eval_step` unless a task
  evaluates splits differently, e.g. translation: greedy on val, beam search on test).
* `monitor` names the validation metric that selects the best checkpoint (higher is better).
* `report_metrics` names the test metrics a report shows for the task, headline first (`make eval` fills
  them in for runs that lack them); empty = the monitor only.

Task constructors: keyword parameters with defaults are the `task.*` config options; `data_root` and
`download` come from the `data` section.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from attention import AttentionSpec
from attention.pooling import PoolingSpec
from lab.registry import Spec as ModelSpec  # which backbone and its options: the `model` config section


@dataclass
class Evaluation:
    metrics: dict[str, float]
    # name -> a function drawing the matplotlib Figure; only called for the figures the trainer logs (test)
    figures: dict[str, Callable[[], Any]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # file name -> text, logged as artifacts of the test split
    tags: dict[str, str] = field(default_factory=dict)  # run tags (e.g. a metric's signature), set on test


class Task:
    monitor: ClassVar[str] = "accuracy"
    report_metrics: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def reported_metrics(cls) -> tuple[str, ...]:
        """The test metrics a report shows (bare names, headline first)."""
        return cls.report_metrics or (cls.monitor,)

    def __init__(self, *, data_root: Path, download: bool):
        self.data_root = Path(data_root)
        self.download = download

    @classmethod
    def prepare(cls, root: Path, *, synthetic: bool = False, download: bool = True) -> None:
        raise NotImplementedError

    def setup(self) -> None:
        raise NotImplementedError

    def datasets(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def collate(self, items: list) -> dict[str, Tensor]:
        return default_collate(items)

    def build_model(self, model: ModelSpec, attention: AttentionSpec, pooling: PoolingSpec) -> nn.Module:
        raise NotImplementedError

    def training_loss(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def eval_step(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def eval_step_for(self, split: str) -> Callable[[nn.Module, dict[str, Tensor]], dict[str, Tensor]]:
        """The per-batch evaluation of `split`; `eval_step` for every split unless a task overrides it."""
        return self.eval_step

    def metrics(self, outputs: dict[str, Tensor], split: str) -> Evaluation:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Facts about the loaded data worth logging (sizes, classes); logged as run params."""
        return {f"data.{split}_size": len(ds) for split, ds in self.datasets().items()}
