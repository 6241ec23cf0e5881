"""The trainer end to end on synthetic CIFAR: MLflow records, exact resume, NaN guard, SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import Tensor

import train
from lab.data import to_device
from lab.hooks import AuxiliaryGradients, collect_auxiliary_losses
from tasks.cifar import Cifar10
from tasks.synthetic_cifar import write_synthetic_cifar

PROJECT = Path(__file__).resolve().parent.parent
TINY = ["task=cifar10", "attention=softmax", "model.dim=32", "model.depth=1", "model.num_heads=2",
        "trainer.batch_size=32", "trainer.lr=3e-3", "tracking.system_metrics=false", "trainer.log_every=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_cifar(root / Cifar10.folder, Cifar10, train_per_class=40, test_per_class=10)
    return root


def args_for(tmp: Path, data_root: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.root={data_root}", f"output_dir={tmp}/runs", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            *extra]


def client(tmp: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp}/mlflow.db")


def only_run(tmp: Path):
    c = client(tmp)
    experiment = c.get_experiment_by_name("cifar10")
    runs = c.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return c, runs[0]


def last_state(tmp: Path) -> dict:
    (path,) = (tmp / "runs").glob("*/*/last.pt")
    return torch.load(path, weights_only=True)


def test_end_to_end_run_is_tracked_and_learns(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert train.main(args_for(tmp_path, data_root, "trainer.epochs=3")) == 0
    c, run = only_run(tmp_path)
    last_line = capsys.readouterr().out.strip().splitlines()[-1]  # where to see the run: this store, this run
    assert f"make ui MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/mlflow.db" in last_line
    assert last_line.endswith(f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    assert run.info.run_name == "cifar10-softmax-s0" and run.info.status == "FINISHED"
    metrics = run.data.metrics
    for name in ("train/loss", "train/lr", "train/samples_per_s", "val/accuracy", "test/accuracy",
                 "test/mean_class_accuracy"):
        assert name in metrics, name
    losses = [m.value for m in sorted(c.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
    print("train/loss", [round(v, 3) for v in losses])
    assert len(losses) > 10 and sum(losses[-5:]) < sum(losses[:5]) - 0.25, "the loss falls"  # learning to a
    # useful accuracy takes hundreds of steps on the stand-in: tests/test_synthetic_difficulty.py
    params = run.data.params
    assert params["trainer.lr"] == "0.003" and params["attention.name"] == "softmax" and "model.num_parameters" in params
    assert run.data.tags["task"] == "cifar10" and run.data.tags["seed"] == "0" and "git_commit" in run.data.tags
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
    assert {a.path for a in c.list_artifacts(run.info.run_id, "figures")} == {
        "figures/confusion_matrix_test.png", "figures/attention_maps_test.png"}
    # softmax rows sum to one; its columns do not: the diagnostics must tell them apart
    assert metrics["attention/row_sum_max_dev"] < 1e-5 and metrics["attention/col_sum_max_dev"] > 0.05
    run_dir = Path(run.data.tags["run_dir"])
    assert (run_dir / "best.pt").exists() and (run_dir / "last.pt").exists() and (run_dir / "config.yaml").exists()


def test_resume_equals_uninterrupted(tmp_path, data_root):
    """N steps, stop, N more == 2N steps straight (crossing an epoch boundary and a validation)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ("trainer.epochs=4", "trainer.batch_size=64")  # 6 batches per epoch
    assert train.main(args_for(split, data_root, *common, "trainer.max_steps=4")) == 0
    assert last_state(split)["step"] == 4
    assert train.main(args_for(split, data_root, *common, "trainer.max_steps=9")) == 0  # resume=auto
    assert train.main(args_for(straight, data_root, *common, "trainer.max_steps=9", "resume=null")) == 0
    resumed, uninterrupted = last_state(split), last_state(straight)
    assert resumed["step"] == uninterrupted["step"] == 9
    for name, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    _, run = only_run(split)  # the continuation logged into the same MLflow run
    steps = [m.step for m in client(split).get_metric_history(run.info.run_id, "train/loss")]
    assert steps == list(range(1, 10))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_root, monkeypatch):
    original = Cifar10.training_loss
    calls = {"n": 0}

    def poisoned(self, model, batch, generator):
        calls["n"] += 1
        loss = original(self, model, batch, generator)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(Cifar10, "training_loss", poisoned)
    code = train.main(args_for(tmp_path, data_root, "trainer.epochs=2", "trainer.eval_every=1"))
    assert code == 1
    state = last_state(tmp_path)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    _, run = only_run(tmp_path)
    assert run.info.status == "FAILED" and "non-finite loss (nan) at step 3" in run.data.tags["failure"]


def test_sigterm_saves_and_resumes(tmp_path, data_root):
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, str(PROJECT / "train.py"),
               *args_for(tmp_path, data_root, "trainer.epochs=50", "trainer.batch_size=8")]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    seen = []
    deadline = time.time() + 120
    for line in process.stdout:  # wait until training is under way
        seen.append(line)
        if line.startswith("step 2/"):
            break
        assert time.time() < deadline, "".join(seen)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, "".join(seen) + out
    stopped_at = last_state(tmp_path)["step"]
    assert stopped_at >= 2
    _, run = only_run(tmp_path)
    assert run.info.status == "KILLED"
    assert train.main(args_for(tmp_path, data_root, "trainer.epochs=50", "trainer.batch_size=8",
                               f"trainer.max_steps={stopped_at + 2}")) == 0
    _, resumed = only_run(tmp_path)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert last_state(tmp_path)["step"] == stopped_at + 2


def head_gradient_after_clipping(tmp: Path, data_root: Path, multiplier: float, *extra: str) -> dict[str, Tensor]:
    """One optimizer step of the real trainer (cswe pooling, every slice violated, λ = `multiplier`):
    the gradients the optimizer receives, captured in place of its step."""
    cfg = train.load_config(args_for(tmp, data_root, "pooling=cswe", "pooling.num_slices=4", "pooling.num_refs=8",
                               "pooling.eps=0.0", "trainer.grad_clip=1.0", *extra))
    trainer = train.Trainer(cfg)
    pool = trainer.model.pool
    pool.lambdas.fill_(multiplier)
    seen = {}
    trainer.optimizer.step = lambda: seen.update({name: p.grad.clone() for name, p in trainer.model.named_parameters()
                                                  if p.grad is not None})
    batch = to_device(trainer.task.collate([trainer.splits["train"][i] for i in range(16)]), trainer.device)
    loss = trainer.task.training_loss(trainer.model, batch, torch.Generator().manual_seed(0))
    auxiliary = collect_auxiliary_losses(trainer.model)
    assert set(auxiliary) == {"cswe/constraint"}
    trainer.auxiliary_gradients.backward(loss, auxiliary)
    stats = trainer._optimizer_step()
    return seen, stats


def test_a_huge_auxiliary_penalty_does_not_shrink_the_clipped_task_gradient(tmp_path, data_root):
    """Clipping bounds the task loss's gradient norm only; the penalty's gradient is added afterwards."""
    plain, plain_stats = head_gradient_after_clipping(tmp_path / "a", data_root, 0.0)
    penalised, stats = head_gradient_after_clipping(tmp_path / "b", data_root, 1e6)
    assert plain_stats["train/grad_norm"] > 1.0, "the task gradient itself is clipped in this setting"
    assert stats["train/grad_norm"] == pytest.approx(plain_stats["train/grad_norm"], rel=1e-6)
    assert stats["train/aux_grad_norm"] > 1e3 and plain_stats["train/aux_grad_norm"] == 0  # λ = 0: no penalty
    for name in ("head.weight", "head.bias", "patch_embed.weight"):
        torch.testing.assert_close(penalised[name], plain[name], rtol=1e-6, atol=1e-9)
    assert (penalised["pool.references"] - plain["pool.references"]).norm() > 1e3  # the penalty still acts


def test_auxiliary_gradients_over_accumulated_micro_batches_are_added_after_clipping():
    """Two micro-batches at scale 1/2: the optimizer sees clip(mean task gradient) + mean auxiliary gradient."""
    model = torch.nn.Linear(3, 2)
    inputs = torch.randn(2, 5, 3)

    def losses(x):
        out = model(x)
        return out.square().sum(), {"penalty": 100.0 * model.weight.sum() ** 2}

    task_total = sum(losses(x)[0] for x in inputs) / 2
    aux_total = sum(losses(x)[1]["penalty"] for x in inputs) / 2
    task_grads = torch.autograd.grad(task_total, list(model.parameters()))
    aux_grads = torch.autograd.grad(aux_total, list(model.parameters()), allow_unused=True)
    coefficient = min(1.0, 0.5 / float(torch.cat([g.flatten() for g in task_grads]).norm()))
    gradients = AuxiliaryGradients(model)
    for x in inputs:
        task, auxiliary = losses(x)
        gradients.backward(task, auxiliary, 0.5)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    assert gradients.add_to_gradients() == pytest.approx(float(aux_grads[0].norm()), rel=1e-5)
    torch.testing.assert_close(model.weight.grad, coefficient * task_grads[0] + aux_grads[0])
    torch.testing.assert_close(model.bias.grad, coefficient * task_grads[1])  # the penalty does not reach it
    assert gradients.add_to_gradients() is None  # the buffer is emptied by each step


def test_cswe_eps_from_a_trained_swe_run_is_the_paper_calibration(tmp_path, data_root):
    """pooling.eps_from=<swe run> sets ε = eps_fraction × that run's recorded final mean hard slice cost."""
    small = ("pooling.num_slices=4", "pooling.num_refs=8", "trainer.max_steps=4", "trainer.epochs=1")
    assert train.main(args_for(tmp_path, data_root, "pooling=swe", *small)) == 0
    (swe_checkpoint,) = (tmp_path / "runs").glob("*/*/last.pt")
    total, weight = torch.load(swe_checkpoint, weights_only=True)["model"]["pool.hard_cost_record"].tolist()
    assert weight > 3 and total > 0  # four steps recorded
    run_folder = swe_checkpoint.parent.parent  # runs/<run name>: its newest run
    cfg = train.load_config(args_for(tmp_path, data_root, "pooling=cswe", f"pooling.eps_from={run_folder}",
                               "pooling.eps_fraction=0.75", *small))
    pool = train.Trainer(cfg).model.pool
    assert pool.eps.item() == pytest.approx(0.75 * total / weight) and not pool.calibrating()
    code = train.main(args_for(tmp_path, data_root, "pooling=cswe", f"pooling.eps_from={tmp_path}/nowhere", *small))
    assert code == 2


def test_periodic_validation_also_validates_the_final_step(tmp_path, data_root):
    """With trainer.eval_every, the steps after the last multiple are validated too, so best.pt can hold the
    final model and the learning curve ends where training ended."""
    assert train.main(args_for(tmp_path, data_root, "trainer.epochs=1", "trainer.eval_every=5")) == 0
    c, run = only_run(tmp_path)
    final = last_state(tmp_path)["step"]
    assert final % 5  # the setting this test is about: training does not end on a multiple of eval_every
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "val/accuracy")]
    assert steps == [*range(5, final, 5), final]
