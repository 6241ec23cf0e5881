"""Grouping runs into report rows, and the rule that puts a paper's number beside a row."""
from __future__ import annotations

import statistics

import pytest

import train
from evaluation.papers import load_paper_numbers, numbers_beside, preset_differences
from evaluation.retest import training_completed
from evaluation.rows import RunRecord, group_rows, mean_std
from lab.config import experiment_names
from lab.tracking import flatten
from tasks import TASKS


def record(run_id: str, seed: int, accuracy: float, start: int = 0, **overrides: str) -> RunRecord:
    tags = {"task": "cifar10", "attention": "softmax", "pooling": "cls", "model": "vit", "experiment": "none",
            "seed": str(seed)}
    params = {"seed": str(seed), "trainer.epochs": "5", "model.dim": "32", "data.root": f"/data/{run_id}",
              "device": "cpu", "attention.name": "softmax"}
    for key, value in overrides.items():
        (tags if key in tags else params)[key.replace("__", ".")] = value
    return RunRecord(run_id, f"run-{run_id}", "FINISHED", start, start + 1, tags, params, {"test/accuracy": accuracy})


def test_seeds_aggregate_and_runtime_keys_do_not_split_rows():
    (row,) = group_rows([record("a", 0, 0.5), record("b", 1, 0.7), record("c", 2, 0.9)])
    mean, std = mean_std(row.values("test/accuracy"))
    assert [r.seed for r in row.runs] == ["0", "1", "2"] and row.label == {}
    assert mean == pytest.approx(0.7) and std == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))


def test_poolings_and_budgets_are_separate_rows_and_the_differing_key_is_shown():
    rows = group_rows([record("a", 0, 0.5, pooling="mean"), record("b", 0, 0.6, pooling="swe"),
                       record("c", 0, 0.7, trainer__epochs="50", pooling="mean")])
    assert [(row.pooling, row.label) for row in rows] == [
        ("mean", {"trainer.epochs": "5"}), ("mean", {"trainer.epochs": "50"}), ("swe", {"trainer.epochs": "5"})]


def test_options_of_different_mechanisms_do_not_label_rows():
    rows = group_rows([record("a", 0, 0.5), record("b", 0, 0.6, attention="esp", attention__inv_temperature="10")])
    assert len(rows) == 2 and all(row.label == {} for row in rows)


def test_the_newest_run_of_a_seed_wins():
    (row,) = group_rows([record("new", 0, 0.9, start=2), record("old", 0, 0.1, start=1)])  # callers: newest first
    assert [r.run_id for r in row.runs] == ["new"]


def test_mean_std_of_one_value_has_no_std():
    assert mean_std([0.25]) == (0.25, None)


def test_paper_numbers_are_on_our_scale():
    numbers = {(n.task, n.model): n for n in load_paper_numbers()}
    assert numbers[("lra_text", "LUNA")].value == pytest.approx(0.7341)
    assert numbers[("lra_image", "LOTFormer")].attention == "lotformer"
    assert numbers[("imagenet", "LUNA (converted)")].value == pytest.approx(0.805)
    gain = numbers[("modelnet40", "esp")]
    assert gain.kind == "gain" and gain.value == pytest.approx(0.005)
    assert numbers[("lra_listops", "Performer")].experiment is None, "JAX harness: never beside ours"


def test_presets_named_for_registered_tasks_exist():
    for number in load_paper_numbers():
        if number.task in TASKS.names() and number.experiment:
            assert number.experiment in experiment_names(), (number.task, number.experiment)


def preset_run(task: str, experiment: str, attention: str, *extra: str) -> RunRecord:
    """A run whose params and tags are exactly what train.py logs for this preset and attention."""
    cfg = train.load_config([f"experiment={experiment}", f"attention={attention}", *extra])
    params = {key: str(value) for key, value in flatten(cfg.to_dict()).items()}
    tags = {"task": task, "attention": attention, "pooling": str(cfg.pooling.name), "model": cfg.model.name,
            "experiment": experiment, "seed": "0"}
    return RunRecord(attention, attention, "FINISHED", 0, 1, tags, params, {"test/accuracy": 0.8})


def test_a_run_of_the_unchanged_preset_matches_it_and_a_changed_one_does_not():
    (gain,) = [n for n in load_paper_numbers() if n.task == "modelnet40"]
    assert preset_differences(preset_run("modelnet40", gain.experiment, "esp"), gain) == []
    changed = preset_run("modelnet40", gain.experiment, "esp", "trainer.epochs=3")
    assert preset_differences(changed, gain) == ["trainer.epochs=3 (preset 200)"]


def test_the_conversion_setting_needs_its_init_weights_and_leaves_the_schedule_open():
    numbers = load_paper_numbers()
    converted = preset_run("imagenet", "imagenet_vit_b16", "luna", "init=torchvision:vit_b_16", "trainer.epochs=5",
                           "trainer.lr=5e-5")  # the README's conversion: LUNA published no fine-tuning schedule
    (row,) = group_rows([converted])
    found, why = numbers_beside(row, numbers)
    assert [n.value for n in found] == [pytest.approx(0.805)] and why == ""
    (scratch,) = group_rows([preset_run("imagenet", "imagenet_vit_b16", "luna")])
    assert numbers_beside(scratch, numbers)[0] == [] and "init=None" in numbers_beside(scratch, numbers)[1]


def test_cpu_defaults_never_get_paper_numbers():
    numbers = load_paper_numbers()
    (row,) = group_rows([record("a", 0, 0.5, task="lra_text", attention="luna")])
    assert numbers_beside(row, numbers) == ([], "")


@pytest.mark.parametrize("status, epoch, step, epochs, max_steps, done", [
    ("FINISHED", 0, 0, 5, 0, True),  # the trainer says so
    ("FAILED", 5, 60, 5, 0, True),  # crashed in its test evaluation, after the last epoch
    ("KILLED", 2, 24, 5, 0, False),  # interrupted mid-training: to be resumed, not tested
    ("RUNNING", 0, 7, 5, 7, True),  # reached max_steps, then killed hard
])
def test_training_completed(status, epoch, step, epochs, max_steps, done):
    last = {"epoch": epoch, "step": step, "config": {"trainer": {"epochs": epochs, "max_steps": max_steps}}}
    assert training_completed(record("a", 0, 0.5) if status == "FINISHED" else
                              RunRecord("a", "a", status, 0, None, {}, {}, {}), last) is done
