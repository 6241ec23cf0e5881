"""`make parity` (bench/parity.py) end to end on a tiny budget: rows, tags, the report's numbers, and a second
invocation that trains nothing again. The real budget is a benchmark, not a test."""
from __future__ import annotations

import dataclasses
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench.parity as parity
from bench.shards import parse_shard, run_shards, take
from lab.registry import ConfigError
from tasks.cifar import Cifar10
from tasks.synthetic_cifar import write_synthetic_cifar

PROJECT = Path(__file__).resolve().parent.parent
TINY = ("task=cifar10", "model.dim=16", "model.depth=1", "model.num_heads=2", "trainer.batch_size=16",
        "trainer.epochs=1", "trainer.max_steps=2")


@pytest.fixture
def tiny_budget(monkeypatch):
    budget = dataclasses.replace(parity.BUDGETS["cifar10"], args=TINY, left_out={"linear": "a reason"})
    monkeypatch.setattr(parity, "BUDGETS", {"cifar10": budget})
    monkeypatch.setattr(parity, "prepare_data", lambda task, budget, root: write_synthetic_cifar(
        root / Cifar10.folder, Cifar10, train_per_class=4, test_per_class=2))
    return budget


def test_rows_are_tracked_tagged_and_reported_against_softmax(tmp_path, tiny_budget, new_store, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    store = new_store(tmp_path / "store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)  # the runs' checkpoints go to ./runs
    args = ["--tasks", "cifar10", "--attentions", "luna,linear", "--seeds", "0,1", "--data-root", str(tmp_path / "data"),
            "--out", str(tmp_path / "out"), "--jobs", "1"]  # in this process: shards would not see the tiny budget
    assert parity.main(args) == 0
    runs = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("cifar10").experiment_id])
    expected = {"softmax", "luna", "lotformer_deit", parity.NO_ATTENTION}
    assert len(runs) == 2 * (len(expected) - 1)  # lotformer is not asked for, so neither is its preset
    assert {run.data.tags["parity"] for run in runs} == expected - {"lotformer_deit"}
    assert len({run.data.tags["sweep"] for run in runs}) == 1
    floor = [run for run in runs if run.data.tags["parity"] == parity.NO_ATTENTION]
    assert {run.data.params["model.depth"] for run in floor} == {"0"}

    report = json.loads((tmp_path / "out" / "parity.json").read_text())["tasks"]["cifar10"]
    assert [row["row"] for row in report["rows"]] == ["softmax", "luna", parity.NO_ATTENTION]
    assert report["left_out"] == {"linear": "a reason"}
    accuracy = {run.info.run_id: run.data.metrics["test/accuracy"] for run in runs}
    softmax = statistics.fmean(accuracy[run_id] for run_id in report["rows"][0]["run_ids"])
    for row in report["rows"]:
        assert row["n"] == 2 and row["seeds"] == ["0", "1"]
        assert row["values"] == [accuracy[run_id] for run_id in row["run_ids"]]
        assert row["mean"] == pytest.approx(statistics.fmean(row["values"]))
        assert row["std"] == pytest.approx(statistics.stdev(row["values"]))
        assert row["delta_softmax"] == pytest.approx(row["mean"] - softmax)
        assert row["seconds_per_epoch"] > 0
    markdown = (tmp_path / "out" / "parity.md").read_text()
    assert "| softmax |" in markdown and "Not trained: `linear`, a reason." in markdown
    assert (tmp_path / "out" / "parity.png").read_bytes()[:4] == b"\x89PNG"

    capsys.readouterr()
    assert parity.main(args) == 0  # the same command again: every run is skipped
    assert "skipped (finished)" in capsys.readouterr().out
    assert len(MlflowClient(store).search_runs([runs[0].info.experiment_id])) == len(runs)


def test_bad_arguments_exit_2_before_anything_runs(tmp_path, tiny_budget, capsys):
    assert parity.main(["--tasks", "iwslt14", "--out", str(tmp_path / "out")]) == 2
    assert "no parity budget for iwslt14" in capsys.readouterr().err
    assert parity.main(["--attentions", "softmx", "--out", str(tmp_path / "out")]) == 2
    assert "softmax" in capsys.readouterr().err
    assert parity.main(["--seeds", "a", "--out", str(tmp_path / "out")]) == 2
    assert parity.main(["--jobs", "0", "--out", str(tmp_path / "out")]) == 2
    assert "--jobs must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shards_split_the_plan_and_their_exit_codes_combine(tmp_path):
    assert parse_shard("1/3") == (1, 3) and take(list(range(8)), (1, 3)) == [1, 4, 7]
    assert sorted(take(range(8), (0, 2)) + take(range(8), (1, 2))) == list(range(8))
    for bad in ("3/3", "a/2", "1"):
        with pytest.raises(ConfigError, match="--shard takes i/N"):
            parse_shard(bad)
    python = [sys.executable, "-c"]
    assert run_shards([[*python, "pass"], [*python, "pass"]]) == 0
    assert run_shards([[*python, "pass"], [*python, "raise SystemExit(1)"]]) == 1
    assert run_shards([[*python, "raise SystemExit(1)"], [*python, "raise SystemExit(130)"]]) == 130


def test_sigterm_to_the_parent_stops_every_shard(tmp_path):
    """Two shards that would sleep a minute: SIGTERM to the parent reaches both; it returns 128 + 15 at once."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    parent = subprocess.Popen([sys.executable, "-c", f"import sys; from bench.shards import run_shards; "
                               f"sys.exit(run_shards([{sleeper!r}, {sleeper!r}]))"], cwd=PROJECT)
    time.sleep(2)
    started = time.time()
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM and time.time() - started < 10
