"""Config composition and validation: typed keys, registry-checked options, one-line errors (exit 2)."""
from __future__ import annotations

import pytest

import train
from lab.config import parse_yaml
from train import load_config
from lab.registry import ConfigError


def test_defaults_resolve_with_every_documented_key():
    cfg = load_config([])  # the protein task file picks its attention, pooling and backbone
    assert cfg.task.name == "protein" and cfg.attention.name == "lotformer" and cfg.pooling.name == "cswe"
    assert cfg.model.name == "sequence_encoder" and cfg.pooling.options["soft_cost_sets"] == 2
    assert cfg.seed == 0 and cfg.resume == "auto" and cfg.data.root == "./data"
    assert cfg.trainer.max_steps == 0 and isinstance(cfg.trainer.lr, float)
    assert cfg.tracking.uri == "sqlite:///mlflow.db"
    assert cfg.run_name == "protein-lotformer-s0"
    assert load_config(["task=cifar10"]).attention.name == "softmax", "train.yaml's attention for other tasks"


def test_overrides_are_typed():
    cfg = load_config(["trainer.lr=3e-4", "trainer.epochs=2", "seed=7", "data.root=123", "resume=null",
                       "model.depth=2"])
    assert cfg.trainer.lr == pytest.approx(3e-4) and cfg.trainer.epochs == 2 and cfg.seed == 7
    assert cfg.data.root == "123", "a text option keeps the text even when it looks like a number"
    assert cfg.resume is None and cfg.model.options["depth"] == 2


def test_yaml_reads_exponent_floats_as_numbers():
    assert parse_yaml("1e-3") == pytest.approx(1e-3) and parse_yaml("2.5E+2") == 250.0
    assert parse_yaml("abc") == "abc" and parse_yaml("10") == 10


@pytest.mark.parametrize("args, message", [
    (["attention=nosuch"], "unknown attention 'nosuch'; valid choices: .*softmax"),
    (["task=cifar1"], "unknown task 'cifar1'; valid choices: cifar10"),
    (["trainer.nosuch=1"], "unknown key 'trainer.nosuch'; valid keys: trainer\\."),
    (["nosuch=1"], "unknown key 'nosuch'; valid keys"),
    (["trainer.epochs=ten"], "trainer.epochs must be int, got 'ten'"),
    (["trainer.lr=fast"], "trainer.lr must be float"),
    (["trainer.precision=fp8"], "trainer.precision must be one of 'auto', 'fp32', 'bf16'"),
    (["model.nosuch=3"], "unknown option 'nosuch' for backbone 'sequence_encoder'; valid options: "),
    (["model.num_classes=3"], "set by the code"),
    (["experiment=nosuch"], "unknown experiment 'nosuch'"),
    (["trainer=1"], "is a section"),
    (["justaword"], "expected key=value"),
])
def test_bad_configs_raise_one_clear_error(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(args)


def test_closest_match_is_listed_first():
    with pytest.raises(ConfigError) as error:
        load_config(["trainer.batchsize=3"])
    assert str(error.value).split("valid keys: ")[1].startswith("trainer.batch_size")


@pytest.mark.parametrize("args", [["attention=nosuch"], ["trainer.nosuch=1"], ["trainer.epochs=x"]])
def test_cli_exits_2_with_one_line_and_writes_nothing(args, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    code = train.main(["task=cifar10", f"output_dir={tmp_path}/runs", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_print_config_shows_resolved_options(capsys):
    assert train.main(["--print-config", "trainer.lr=0.01"]) == 0
    out = parse_yaml(capsys.readouterr().out)
    assert out["trainer"]["lr"] == 0.01 and out["model"]["name"] == "sequence_encoder" and "depth" in out["model"]
    assert out["pooling"]["name"] == "cswe" and out["pooling"]["num_slices"] == 32


def test_missing_data_offline_is_one_line(tmp_path, capsys):
    code = train.main(["task=cifar10", f"data.root={tmp_path}", "data.download=false",
                       f"output_dir={tmp_path}/runs"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "cifar-10-python.tar.gz" in err and str(tmp_path) in err


def test_task_settings_apply_to_the_tasks_own_choice_only():
    from backbones import BACKBONES

    assert load_config(["task=cifar10"]).model.options["dim"] == 128  # configs/task/cifar10.yaml
    assert load_config(["task=cifar10", "model=vit"]).model.options["dim"] == 128
    other = load_config(["task=protein", "model=set_pooler"]).model
    assert other.name == "set_pooler"
    assert other.options == {k: o.default for k, o in BACKBONES.options("set_pooler").items()}
