"""Faults during training: divergence, kill -9, interrupted checkpoint writes, a new tracking store. None may
cost more than the last checkpoint, and none may leave a poisoned checkpoint or a broken record."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from lab import checkpoint
from lab.checkpoint import CHECKPOINT_KEYS, find_resumable, load_checkpoint, nonfinite_tensors, save_checkpoint
from run_checks import checkpoints, load_state, mlflow_runs, outputs_in

PROJECT = Path(__file__).resolve().parent.parent


def assert_all_finite(paths: list[Path]) -> None:
    for path in paths:
        state = load_state(path)
        assert nonfinite_tensors({"model": state["model"], "optimizer": state["optimizer"]["state"]}) == [], path


def divergence_message(err: str) -> str:
    """The one error line (MLflow's own log lines share stderr)."""
    lines = [line for line in err.splitlines() if not line.startswith(tuple("0123456789"))]
    assert len(lines) == 1 and lines[0].startswith("error: non-finite"), err
    return lines[0]


def test_a_huge_learning_rate_stops_before_the_update_and_keeps_a_finite_checkpoint(cifar_args, tmp_path, capsys,
                                                                                      new_store):
    """Finding 1: lr=1e6 gives a finite loss whose gradient is NaN; the update used to write NaN weights,
    which validation then saved as best.pt and last.pt."""
    new_store(tmp_path)
    code = train.main([*cifar_args, "trainer.lr=1e6", "trainer.eval_every=2", "trainer.batch_size=8",
                       *outputs_in(tmp_path)])
    message = divergence_message(capsys.readouterr().err)
    assert code == 1 and message.startswith("error: non-finite gradient norm (nan) at step 2"), message
    (run_dir,) = (tmp_path / "runs").glob("*/*")
    kept = run_dir / "last.pt"
    assert f"the state before it (step 1) is kept in {kept}" in message and f"resume={kept}" in message
    assert load_state(kept)["step"] == 1 and checkpoints(tmp_path) == [kept]
    assert_all_finite(checkpoints(tmp_path))
    (run,) = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert run.info.status == "FAILED" and run.data.tags["failure"].startswith("non-finite gradient norm (nan)")


def test_weights_made_non_finite_by_an_update_are_never_saved(cifar_args, tmp_path, capsys, monkeypatch, new_store):
    """An update can overflow with finite gradients; the checkpoint written before it is the one named."""
    new_store(tmp_path)
    optimizer_step = train.Trainer._optimizer_step

    def overflowing(self):
        stats = optimizer_step(self)
        if self.step == 3:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))
        return stats

    monkeypatch.setattr(train.Trainer, "_optimizer_step", overflowing)
    code = train.main([*cifar_args, "trainer.eval_every=1", "trainer.batch_size=8", *outputs_in(tmp_path)])
    message = divergence_message(capsys.readouterr().err)
    (run_dir,) = (tmp_path / "runs").glob("*/*")
    assert code == 1 and message.startswith("error: non-finite values in 1 tensors after step 3"), message
    assert message.endswith(f"the last good checkpoint is {run_dir / 'last.pt'}")
    assert load_state(run_dir / "last.pt")["step"] == 2
    assert_all_finite(checkpoints(tmp_path))


def test_kill_9_mid_epoch_then_the_same_command_continues_the_same_run_exactly(cifar_args, tmp_path, capsys,
                                                                              new_store):
    """Must-show 2: the continuation replays the steps after the last checkpoint and ends where an
    uninterrupted run ends, bit for bit, in the same MLflow run."""
    args = [*cifar_args, "model.dim=32", "model.depth=2", "trainer.batch_size=4", "trainer.epochs=2",
            "trainer.eval_every=4", "trainer.log_every=1"]  # 9 batches per epoch, checkpoints every 4 steps
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    new_store(killed), new_store(straight)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen([sys.executable, str(PROJECT / "train.py"), *args, *outputs_in(killed)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, deadline = [], time.time() + 120
    for line in process.stdout:  # step 5 is mid-epoch, after the checkpoint of step 4
        seen.append(line)
        if line.startswith("step 5/18"):
            break
        assert time.time() < deadline, "".join(seen)
    process.send_signal(signal.SIGKILL)
    seen.append(process.communicate(timeout=60)[0])
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    logged_before_kill = max(int(line.split()[1].split("/")[0]) for line in "".join(seen).splitlines()
                             if line.startswith("step ") and "/18" in line)
    (before,) = mlflow_runs(f"sqlite:///{killed}/mlflow.db")
    assert before.info.status == "RUNNING"  # a killed process cannot say otherwise

    capsys.readouterr()
    assert train.main([*args, *outputs_in(killed)]) == 0  # the same command
    resumed_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("resuming "))
    resumed_at = int(resumed_line.split(" at step ")[1].split()[0])
    assert resumed_at % 4 == 0 and resumed_at < logged_before_kill, (resumed_line, logged_before_kill)
    assert train.main([*args, *outputs_in(straight), "resume=null"]) == 0
    (run,) = mlflow_runs(f"sqlite:///{killed}/mlflow.db")
    assert run.info.run_id == before.info.run_id and run.info.status == "FINISHED"
    resumed, uninterrupted = (load_state(next((root / "runs").glob("*/*/last.pt"))) for root in (killed, straight))
    assert resumed["step"] == uninterrupted["step"] == 18
    for name, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], value), name

    from mlflow.tracking import MlflowClient

    history = MlflowClient(f"sqlite:///{killed}/mlflow.db").get_metric_history(run.info.run_id, "train/loss")
    losses: dict[int, list[float]] = {}
    for point in history:
        losses.setdefault(point.step, []).append(point.value)
    assert sorted(losses) == list(range(1, 19))
    replayed = sorted(step for step, values in losses.items() if len(values) == 2)
    assert replayed == list(range(resumed_at + 1, logged_before_kill + 1)), "logged twice: checkpoint .. kill"
    assert all(losses[step][0] == losses[step][1] for step in replayed), "a replayed step logs the same loss again"


def full_state(step: int) -> dict:
    return {**{key: None for key in CHECKPOINT_KEYS}, "model": {"w": torch.full((1000,), float(step))},
            "step": step, "fingerprint": "f"}


def test_a_checkpoint_write_cut_short_is_never_picked(tmp_path, monkeypatch):
    """A kill during `torch.save` leaves a partial temporary file; last.pt stays the previous, whole one."""
    path = tmp_path / "runs" / "name" / "20000101-000000" / "last.pt"
    save_checkpoint(full_state(3), path)
    real_save = torch.save

    def dies_mid_write(state, handle):
        real_save(state, handle)
        handle.truncate(handle.tell() // 2)
        raise KeyboardInterrupt  # stands for the kill

    monkeypatch.setattr(checkpoint.torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(full_state(5), path)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    (partial,) = path.parent.glob(".last.pt.tmp*")
    assert partial.stat().st_size > 0
    assert find_resumable(tmp_path / "runs", "name", "f", planned_steps=10) == path
    assert load_checkpoint(path)["step"] == 3
    save_checkpoint(full_state(6), path)  # the next write clears what the interrupted one left
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"] and load_checkpoint(path)["step"] == 6


def test_resuming_into_another_tracking_store_continues_in_a_new_run_there(cifar_args, tmp_path, capsys, new_store):
    """Finding 3: the checkpoint's run id is not in the new store; every rerun used to fail in start_run."""
    args = [*cifar_args, "trainer.batch_size=8", "trainer.log_every=1", f"output_dir={tmp_path}/runs"]
    first, second = new_store(tmp_path / "first"), new_store(tmp_path / "second")
    assert train.main([*args, "trainer.max_steps=2", f"tracking.uri={first}"]) == 0
    (original,) = mlflow_runs(first)
    capsys.readouterr()
    assert train.main([*args, "trainer.max_steps=4", f"tracking.uri={second}"]) == 0
    assert f"note: the checkpoint's MLflow run {original.info.run_id} is not in {second}" in capsys.readouterr().out
    (moved,) = mlflow_runs(second)
    assert moved.info.status == "FINISHED" and moved.data.tags["resumed_from_run"] == original.info.run_id
    from mlflow.tracking import MlflowClient

    steps = [m.step for m in MlflowClient(second).get_metric_history(moved.info.run_id, "train/loss")]
    assert steps == [3, 4] and "config.yaml" in {a.path for a in MlflowClient(second).list_artifacts(moved.info.run_id)}
    assert train.main([*args, "trainer.max_steps=5", f"tracking.uri={second}"]) == 0  # and again: same new run
    (again,) = mlflow_runs(second)
    assert again.info.run_id == moved.info.run_id and again.info.status == "FINISHED"
