"""Evaluating a model on one split: the one code path for validation and the final test during training
(`train.py`) and for re-testing a tracked run's best checkpoint (`make eval`, evaluation/retest.py).

The task's per-split step (`eval_step_for(split)`: e.g. greedy decoding on val, beam search on test) runs
over every batch of the split (under the run's autocast), per-example outputs are concatenated and gathered
across ranks, and the task's `metrics` turns them into numbers, figures, texts and tags. So a task whose test
evaluation decodes or computes corpus-level scores (BLEU) gets the same numbers here as in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .data import EpochBatchSampler, make_loader, to_device
from .diagnostics import probe_model
from .runtime import Distributed, autocast_context


@torch.no_grad()
def evaluate_split(task, model: nn.Module, dataset, split: str, *, batch_size: int, num_workers: int,
                   device: torch.device, precision: str, dist: Distributed):
    """`task.metrics(outputs, split)` (an `Evaluation`: metrics and figure functions) over the whole `dataset`."""
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=False, rank=dist.rank, world_size=dist.world_size)
    loader = make_loader(dataset, sampler, task.collate, num_workers, device)
    was_training = model.training
    model.eval()
    eval_step = task.eval_step_for(split)
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        with autocast_context(device, precision):
            out = eval_step(model, to_device(batch, device))
        for key, value in out.items():
            parts.setdefault(key, []).append(value.detach().float().cpu() if value.is_floating_point()
                                             else value.detach().cpu())
    model.train(was_training)
    outputs = dist.gather({key: torch.cat(values) for key, values in parts.items()})
    return task.metrics(outputs, split)


@dataclass
class TestResults:
    """What a test evaluation logs to its run (artifact paths as keys)."""
    metrics: dict[str, float]  # test/<name>
    figures: dict[str, Callable[[], Any]]  # figures/<name>_test.png -> drawing function (rank 0 only)
    texts: dict[str, str]  # samples/<name> -> text (e.g. translations)
    tags: dict[str, str]  # e.g. a metric's signature


def evaluate_test_split(task, model: nn.Module, dataset, *, batch_size: int, num_workers: int, device: torch.device,
                        precision: str, dist: Distributed) -> TestResults:
    """The test split's metrics, texts and tags, and on rank 0 its figures: the task's own and the attention
    diagnostics on the first test examples."""
    evaluation = evaluate_split(task, model, dataset, "test", batch_size=batch_size, num_workers=num_workers,
                                device=device, precision=precision, dist=dist)
    figures = {}
    if dist.is_main:
        figures = {**evaluation.figures, **probe_model(task, model, dataset, device).figures()}
    return TestResults(metrics={f"test/{key}": value for key, value in evaluation.metrics.items()},
                       figures={f"figures/{name}_test.png": draw for name, draw in figures.items()},
                       texts={f"samples/{name}": text for name, text in evaluation.texts.items()},
                       tags=dict(evaluation.tags))
