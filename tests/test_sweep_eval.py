"""`make sweep` and `make eval` end to end on synthetic CIFAR with a tiny ViT (the issue's must-shows 1-5)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
from pathlib import Path

import pytest

import train
from evaluation import report, sweep
from tasks.cifar import Cifar10
from tasks.synthetic_cifar import write_synthetic_cifar

PROJECT = Path(__file__).resolve().parent.parent
TINY = ["task=cifar10", "model.dim=32", "model.depth=1", "model.num_heads=2", "trainer.batch_size=32",
        "trainer.lr=3e-3", "trainer.epochs=1", "tracking.system_metrics=false"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_cifar(root / Cifar10.folder, Cifar10, train_per_class=40, test_per_class=10)
    return root


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables created (creating them takes seconds: done once, then copied)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, empty_store, monkeypatch):
    """This test's tracking store, reached as users reach theirs: through MLFLOW_TRACKING_URI."""
    from mlflow.tracking import MlflowClient

    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(uri)


def tiny(tmp_path: Path, data_root: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.root={data_root}", f"output_dir={tmp_path}/runs", *extra]


def runs_tagged(client, **tags) -> list:
    experiment = client.get_experiment_by_name("cifar10")
    where = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
    return client.search_runs([experiment.experiment_id], filter_string=where)


def evaluate(tmp_path: Path, *args: str) -> dict:
    assert report.main(["--out", str(tmp_path / "report"), *args]) == 0
    return json.loads((tmp_path / "report" / "report.json").read_text())


def test_sweep_then_eval_reports_each_attention_over_seeds(tmp_path, data_root, store, capsys):
    """Must-show 1: one row per attention, mean ± std over 2 seeds equal to MLflow's numbers, PNG figures."""
    args = ["--attentions", "softmax lotformer", "--seeds", "0 1", *tiny(tmp_path, data_root)]
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    identifier = out.split("sweep ", 1)[1].split(":", 1)[0]
    assert "4/4 runs finished" in out and out.count("finished ") >= 4
    data = evaluate(tmp_path, "--task", "cifar10")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert sorted(row["attention"] for row in data["rows"]) == ["lotformer", "softmax"]
    for row in data["rows"]:
        runs = runs_tagged(store, attention=row["attention"], sweep=identifier)
        logged = [run.data.metrics["test/accuracy"] for run in sorted(runs, key=lambda r: r.data.tags["seed"])]
        accuracy = row["metrics"]["accuracy"]
        assert row["n"] == 2 and accuracy["values"] == logged
        assert accuracy["mean"] == statistics.fmean(logged) and accuracy["std"] == statistics.stdev(logged)
        assert f"{statistics.fmean(logged):.4f} ± {statistics.stdev(logged):.4f}" in markdown
        assert sorted(row["run_ids"]) == sorted(run.info.run_id for run in runs)
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").glob("*.png"))
    assert {"cifar10_test_accuracy.png", "cifar10_val_accuracy.png", "cifar10_lotformer_attention_maps.png",
            "cifar10_softmax_attention_maps.png"} <= set(figures)
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(figures) and "http" not in page.split("<body>")[1]
    (eval_run,) = store.search_runs([store.get_experiment_by_name("eval").experiment_id])
    assert {"report.md", "report.html", "report.json"} <= {a.path for a in store.list_artifacts(eval_run.info.run_id)}
    some_run = runs_tagged(store, attention="lotformer")[0].info.run_id  # diagnostics logged during training
    diagnostics = [a.path for a in store.list_artifacts(some_run, "diagnostics")]
    assert any(path.startswith("diagnostics/attention_maps_step") for path in diagnostics)


def test_poolings_get_their_own_names_and_rows(tmp_path, data_root, store):
    """Must-show 2: pooling=mean and pooling=swe of one task/attention/seed are two runs and two rows."""
    assert sweep.main(["--attentions", "softmax", "--poolings", "mean swe", "--seeds", "0",
                       *tiny(tmp_path, data_root)]) == 0
    names = sorted(run.info.run_name for run in runs_tagged(store, attention="softmax"))
    assert names == ["cifar10-softmax-mean-s0", "cifar10-softmax-swe-s0"]
    data = evaluate(tmp_path)
    assert sorted(row["pooling"] for row in data["rows"]) == ["mean", "swe"]


def test_interrupted_sweep_resumes_the_interrupted_run_and_skips_finished_ones(tmp_path, data_root, store,
                                                                              monkeypatch, capsys):
    """Must-show 3: SIGTERM to the sweep's process during the second run; the same sweep again skips the first
    and finishes the second in its own MLflow run."""
    args = ["--attentions", "softmax", "--seeds", "0 1", *tiny(tmp_path, data_root, "trainer.batch_size=16")]
    optimizer_step = train.Trainer._optimizer_step

    def step_then_terminate_seed_1(self):
        stats = optimizer_step(self)
        if self.cfg.seed == 1 and self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what `kill <sweep pid>` delivers
        return stats

    with monkeypatch.context() as patch:
        patch.setattr(train.Trainer, "_optimizer_step", step_then_terminate_seed_1)
        assert sweep.main(args) == 128 + signal.SIGTERM
    assert "interrupted (resumable)" in capsys.readouterr().out
    (first,) = runs_tagged(store, seed="0")
    (second,) = runs_tagged(store, seed="1")
    assert first.info.status == "FINISHED" and second.info.status == "KILLED"
    assert "test/accuracy" not in second.data.metrics

    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    assert "skipped (finished)" in out and "resuming" in out and "resumed, finished" in out
    (again_first,) = runs_tagged(store, seed="0")
    assert again_first.info.run_id == first.info.run_id  # skipped: no second run of seed 0
    (resumed,) = runs_tagged(store, seed="1")
    assert resumed.info.run_id == second.info.run_id  # resumed into the same MLflow run
    assert resumed.info.status == "FINISHED" and "test/accuracy" in resumed.data.metrics
    steps = [m.step for m in store.get_metric_history(resumed.info.run_id, "train/loss")]
    assert steps == [10, 20, 23], "each step logged once: the second run continued from step 3"


def test_a_failed_run_does_not_stop_the_sweep(tmp_path, capsys):
    identifier, cells = sweep.plan(["task=cifar10", f"output_dir={tmp_path}/runs",
                                    f"tracking.uri=sqlite:///{tmp_path}/none.db"], ["softmax", "luna"], [], [0], None)
    calls = []

    def launch(args):
        calls.append(args)
        if "attention=softmax" in args:
            raise RuntimeError("a bug in this run")
        return 0

    assert sweep.run_sweep(identifier, cells, launch) == 1
    out = capsys.readouterr()
    assert len(calls) == 2 and "RuntimeError: a bug in this run" in out.err
    assert "failed (exit 1)" in out.out and "cifar10-luna-s0" in out.out


def test_a_bad_grid_runs_nothing(tmp_path, capsys):
    code = sweep.main(["--attentions", "softmax nosuch", f"tracking.uri=sqlite:///{tmp_path}/m.db", "task=cifar10"])
    assert code == 2 and "unknown attention 'nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()


def delete_test_metrics(store_path: Path, run_id: str) -> None:
    with sqlite3.connect(store_path) as db:
        for table in ("metrics", "latest_metrics"):
            db.execute(f"DELETE FROM {table} WHERE run_uuid = ? AND key LIKE 'test/%'", (run_id,))


def test_eval_fills_in_missing_test_metrics_from_the_best_checkpoint(tmp_path, data_root, store, monkeypatch):
    """Must-show 4: a run whose test metrics were deleted and one that crashed in its test evaluation get them,
    logged to the same run; a run whose checkpoint is gone is listed, not dropped."""
    assert train.main(tiny(tmp_path, data_root, "seed=0")) == 0
    assert train.main(tiny(tmp_path, data_root, "seed=2")) == 0
    (deleted,), (gone,) = runs_tagged(store, seed="0"), runs_tagged(store, seed="2")
    before = {k: v for k, v in deleted.data.metrics.items() if k.startswith("test/")}
    for run in (deleted, gone):
        delete_test_metrics(tmp_path / "mlflow.db", run.info.run_id)
    shutil.rmtree(gone.data.tags["run_dir"])

    def crash(self, tracker):
        raise RuntimeError("killed during the test evaluation")

    with monkeypatch.context() as patch:
        patch.setattr(train.Trainer, "_test", crash)
        with pytest.raises(RuntimeError):
            train.main(tiny(tmp_path, data_root, "seed=1"))
    (crashed,) = runs_tagged(store, seed="1")
    assert crashed.info.status == "FAILED" and "test/accuracy" not in crashed.data.metrics

    data = evaluate(tmp_path, "--task", "cifar10")
    after = store.get_run(deleted.info.run_id).data.metrics
    assert {k: after[k] for k in before} == before, "the same checkpoint through the same code path"
    filled = store.get_run(crashed.info.run_id)
    assert "test/macro_f1" in filled.data.metrics and filled.data.tags["test_source"].startswith("make eval")
    assert "figures/confusion_matrix_test.png" in {a.path for a in store.list_artifacts(crashed.info.run_id, "figures")}
    assert {item["run_id"] for item in data["filled_in"]} == {deleted.info.run_id, crashed.info.run_id}
    (left_out,) = data["left_out"]
    assert left_out["run_id"] == gone.info.run_id and left_out["reason"].startswith("checkpoint gone")
    (row,) = data["rows"]
    assert row["n"] == 2 and row["metrics"]["accuracy"]["values"][0] == before["test/accuracy"]


def test_eval_on_an_empty_store_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/empty.db")
    assert report.main(["--out", str(tmp_path / "report")]) == 0
    assert capsys.readouterr().out.count("\n") == 1
    assert not (tmp_path / "empty.db").exists() and not (tmp_path / "report").exists()


def logged_run(client, experiment: str, tags: dict, metrics: dict, params: dict | None = None) -> str:
    """A finished run written straight into the store (no training): what the report reads."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=f"{tags['task']}-{tags['attention']}-s{tags['seed']}", tags=tags)
    for key, value in (params or {}).items():
        client.log_param(run.info.run_id, key, value)
    for step, (key, value) in enumerate(metrics.items()):
        client.log_metric(run.info.run_id, key, value, step=step)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture
def logged_store(tmp_path, store):
    base = {"task": "cifar10", "pooling": "cls", "model": "vit", "experiment": "none", "sweep": "none"}
    for attention, seed, accuracy in (("softmax", 0, 0.61), ("softmax", 1, 0.65), ("esp", 0, 0.7)):
        logged_run(store, "cifar10", {**base, "attention": attention, "seed": str(seed)},
                   {"val/accuracy": accuracy - 0.1, "test/accuracy": accuracy, "test/mean_class_accuracy": accuracy,
                    "test/macro_f1": accuracy - 0.05, "train/samples_per_s": 100.0 + seed},
                   {"trainer.epochs": "3", "model.num_parameters": "1234"})
    logged_run(store, "someone_else", {"task": "nosuch", "attention": "softmax", "seed": "0"}, {"test/accuracy": 1.0})
    return store


def test_runs_of_unknown_tasks_are_skipped_with_a_note(tmp_path, logged_store):
    data = evaluate(tmp_path)
    assert sorted(row["attention"] for row in data["rows"]) == ["esp", "softmax"]
    (note,) = data["left_out"]
    assert "unknown task 'nosuch'" in note["reason"]
    assert "unknown task 'nosuch'" in (tmp_path / "report" / "report.md").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_the_html_report_renders_in_headless_chromium(tmp_path, logged_store):
    """Must-show 5: the self-contained page renders (tables and embedded figures) with no network."""
    evaluate(tmp_path)
    page = tmp_path / "report" / "report.html"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "<table>" in dom and dom.count("<img") >= 2 and "0.6300 ± 0.0283" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()], capture_output=True,
                   timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1600, 1200) and pixels.std() > 0.05, "a rendered page, not a blank one"
