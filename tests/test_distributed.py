"""Data parallel with torchrun on CPU (gloo): two ranks, one MLflow run, metrics over the whole split,
SIGTERM to the launcher stops every rank with one checkpoint, and resume=auto continues it."""
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
from lab.runtime import Distributed
from run_checks import checkpoints, load_state, mlflow_runs, outputs_in

PROJECT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).parent / "torchrun"


def test_torchrun_two_ranks_sigterm_then_resume_one_run_global_validation_accuracy(cifar_args, tmp_path, new_store):
    """Must-show 1. 40 synthetic images: val_fraction 0.175 keeps 7 for validation, an odd count, so a sampler
    that padded the split (as DistributedSampler does) would count an image twice and change the accuracy."""
    store = new_store(tmp_path)
    args = [*cifar_args, "task.val_fraction=0.175", "trainer.batch_size=4", "trainer.epochs=2",
            "trainer.log_every=1", *outputs_in(tmp_path)]  # 33 training images: 17 per rank, 5 steps per epoch
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(PROJECT / "train.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)

    launcher = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    seen, deadline = [], time.time() + 120
    for line in launcher.stdout:
        seen.append(line)
        if line.startswith("step 2/10"):
            break
        assert time.time() < deadline, "".join(seen)
    launcher.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    seen.append(launcher.communicate(timeout=120)[0])
    output = "".join(seen)
    with pytest.raises(ProcessLookupError):  # no rank left behind
        os.killpg(launcher.pid, 0)
    stopped = [line for line in output.splitlines() if line.startswith("stopped at step")]
    assert len(stopped) == 1, output  # rank 0 reports, after both ranks stopped at the same step
    stopped_at = int(stopped[0].split()[3].rstrip(";"))
    (last,) = checkpoints(tmp_path)
    assert last.name == "last.pt" and load_state(last)["step"] == stopped_at < 10
    (run,) = mlflow_runs(store)
    assert run.info.status == "KILLED"

    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at step {stopped_at} " in resumed.stdout and "the model is identical on all 2 ranks" in resumed.stdout
    (finished,) = mlflow_runs(store)
    assert finished.info.run_id == run.info.run_id and finished.info.status == "FINISHED"
    assert finished.data.tags["world_size"] == "2" and finished.data.params["data.val_size"] == "7"

    from mlflow.tracking import MlflowClient

    history = MlflowClient(store).get_metric_history(run.info.run_id, "val/accuracy")
    logged = max(history, key=lambda point: point.step)
    assert logged.step == 10
    single = train.Trainer(train.load_config([*cifar_args, "task.val_fraction=0.175", "resume=null"]))
    single.model.load_state_dict(load_state(last.parent / "last.pt")["model"])
    assert len(single.splits["val"]) == 7
    assert logged.value == single.evaluate("val").metrics["accuracy"]  # every image once, on one process


def test_ranks_whose_models_drift_apart_are_caught_before_a_checkpoint(monkeypatch):
    """`check_identical` compares every rank's digest of the model; here the other rank's is simulated."""
    from lab import runtime

    ranks = Distributed(torch.device("cpu"))  # one process: the digest of its own state
    state, drifted = {"w": torch.arange(4.0)}, {"w": torch.tensor([1.0, 1.0, 2.0, 3.0])}
    others = {"same": ranks.check_identical(state), "drifted": ranks.check_identical(drifted)}

    def gather(other):
        def all_gather_object(out, mine):
            out[:] = [mine, others[other]]
        return all_gather_object

    ranks.world_size = 2
    monkeypatch.setattr(runtime.dist, "all_gather_object", gather("same"))
    assert ranks.check_identical(state) == others["same"]
    monkeypatch.setattr(runtime.dist, "all_gather_object", gather("drifted"))
    with pytest.raises(RuntimeError, match="the model differs across data-parallel ranks"):
        ranks.check_identical(state)


def test_make_train_nproc_launches_torchrun():
    dry_run = subprocess.run(["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "train", "NPROC=2",
                              "TASK=cifar10"], cwd=PROJECT, capture_output=True, text=True, check=True).stdout
    assert dry_run.split() == [".venv/bin/torchrun", "--standalone", "--nproc_per_node=2", "train.py", "task=cifar10"]
