"""Filling in a tracked run's missing test metrics from its best checkpoint.

A run lacks test metrics when it stopped after training but before its test evaluation (killed, crashed), or
when it was tested before the task reported a metric. If its training completed (the run FINISHED, or its
`last.pt` reached the planned epochs or `max_steps`) and its best checkpoint still exists (the run folder's
`best.pt`, else the `checkpoints/best.pt` artifact of `tracking.log_checkpoint`), the checkpoint is tested
through the training code path (`train.build_task_and_model`, `lab.evaluate.evaluate_test_split`: beam search
and corpus BLEU for translation, the task's metrics elsewhere) and the results and test figures are logged
back to the same run, at the checkpoint's step, with a `test_source` tag saying so.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import train
from lab import config
from lab.checkpoint import load_checkpoint
from lab.download import DataError
from lab.evaluate import TestResults, evaluate_test_split
from lab.registry import ConfigError
from lab.runtime import Distributed, select_device

from .rows import RunRecord


class NotRetestable(Exception):
    """Why a run's test metrics cannot be filled in (one line, shown in the report)."""


def training_completed(run: RunRecord, last: dict | None) -> bool:
    if run.status == "FINISHED":
        return True
    if last is None:
        return False
    trainer = last["config"]["trainer"]
    return last["epoch"] >= trainer["epochs"] or 0 < trainer["max_steps"] <= last["step"]


def best_checkpoint(run: RunRecord, client, scratch: Path) -> Path:
    """The run's best.pt: in its run folder, else downloaded from its artifacts; NotRetestable if gone."""
    run_dir = run.tags.get("run_dir")
    if run_dir and (Path(run_dir) / "best.pt").exists():
        return Path(run_dir) / "best.pt"
    if any(a.path == "checkpoints/best.pt" for a in client.list_artifacts(run.run_id, "checkpoints")):
        return Path(client.download_artifacts(run.run_id, "checkpoints/best.pt", str(scratch)))
    raise NotRetestable(f"checkpoint gone: no {Path(run_dir or '<no run_dir tag>') / 'best.pt'} and no "
                        "checkpoints/best.pt artifact")


def retest(run: RunRecord, client, *, data_root: str | None = None, device: str = "auto") -> dict[str, float]:
    """Test the run's best checkpoint and log the metrics and figures back to it; returns the metrics."""
    run_dir = Path(run.tags.get("run_dir", ""))
    last_path = run_dir / "last.pt"
    last = load_checkpoint(last_path) if run.tags.get("run_dir") and last_path.exists() else None
    if not training_completed(run, last):
        where = f"at step {last['step']}" if last else "before its first checkpoint"
        if run.tags.get("failure"):
            raise NotRetestable(f"training stopped {where}: {run.tags['failure']}")
        state = "still running, or killed without saving," if run.status == "RUNNING" else "interrupted"
        raise NotRetestable(f"training {state} {where}: the same command resumes it (resume=auto)")
    with tempfile.TemporaryDirectory() as scratch:
        state = load_checkpoint(best_checkpoint(run, client, Path(scratch)))
    tree = state["config"]
    if data_root is not None:
        tree["data"]["root"] = data_root
    try:
        cfg = config.validate(tree, train.COMPONENTS)
        torch_device = select_device(device)
        task, model = train.build_task_and_model(cfg, torch_device)
    except (ConfigError, DataError) as error:
        raise NotRetestable(f"cannot rebuild the run: {error}") from None
    model.load_state_dict(state["model"])
    results = evaluate_test_split(task, model, task.datasets()["test"], batch_size=cfg.trainer.batch_size,
                                  num_workers=cfg.trainer.num_workers, device=torch_device,
                                  precision=cfg.trainer.precision, dist=Distributed(torch_device))
    log_back(client, run.run_id, results, state["step"])
    return results.metrics


def log_back(client, run_id: str, results: TestResults, step: int) -> None:
    """Log a test evaluation to an existing run, as the trainer's `_test` does to its own."""
    from mlflow.entities import Metric

    import matplotlib.pyplot as plt

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, step) for key, value in results.metrics.items()])
    for path, text in results.texts.items():
        client.log_text(run_id, text, path)
    for key, value in results.tags.items():
        client.set_tag(run_id, key, value)
    for path, draw in results.figures.items():
        figure = draw()
        client.log_figure(run_id, figure, path)
        plt.close(figure)
    client.set_tag(run_id, "test_source", f"make eval {time.strftime('%Y-%m-%d %H:%M')}: best.pt of step {step}")
