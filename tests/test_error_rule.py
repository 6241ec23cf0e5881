"""The one error rule: a mistake in the user's input (ConfigError, DataError) exits 2 with one line before
anything is written; any other exception is a bug and shows its traceback (exit 1, never 2)."""
from __future__ import annotations

import functools
import runpy
import sys
import traceback
from pathlib import Path

import pytest

import train
from attention.pooling.base import POOLINGS
from backbones import BACKBONES
from lab.config import parse_option_value
from lab.registry import ConfigError
from run_checks import assert_one_line_exit_2_and_nothing_written, outputs_in

PROJECT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("bug", [RuntimeError, ValueError])  # ConfigError is a ValueError: not the reverse
def test_a_bug_while_building_the_model_shows_its_traceback_and_does_not_exit_2(bug, tmp_path, cifar_args,
                                                                                 monkeypatch, capsys):
    """`python train.py ...` (run as __main__) with the vit constructor broken: same signature, raises `bug`.

    The exception escapes train.py, so Python prints its traceback and exits with status 1; a user error
    would instead end in SystemExit(2) after one line."""
    from backbones.vit import ViT

    @functools.wraps(ViT.__init__)
    def broken(self, *args, **kwargs):
        raise bug("deliberately broken backbone constructor")

    monkeypatch.setattr(ViT, "__init__", broken)
    monkeypatch.setattr(sys, "argv", ["train.py", *cifar_args, *outputs_in(tmp_path)])
    with pytest.raises(bug, match="deliberately broken backbone constructor") as error:
        runpy.run_path(str(PROJECT / "train.py"), run_name="__main__")
    frames = [frame.name for frame in traceback.extract_tb(error.tb)]
    assert "main" in frames and "build_model" in frames and frames[-1] == "broken", frames
    assert "error:" not in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def rejected_option(registry, name: str) -> tuple[str, str]:
    """(key, command-line value) that the entry's option schema rejects: the first option with a value its
    type refuses, or an unknown key for an entry without such options."""
    for key, option in registry.options(name).items():
        for raw in ("not-a-value", "[1, 2]", "{a: 1}"):
            try:
                parse_option_value(raw, option, f"{registry.kind}.{key}")
            except ConfigError:
                return key, raw
    return "no_such_option", "1"


@pytest.mark.parametrize("group, registry, name",
                         [pytest.param("pooling", POOLINGS, n, id=f"pooling-{n}") for n in POOLINGS.names()]
                         + [pytest.param("model", BACKBONES, n, id=f"backbone-{n}") for n in BACKBONES.names()])
def test_a_bad_option_value_for_any_pooling_or_backbone_exits_2_with_one_line(group, registry, name, tmp_path,
                                                                               capsys):
    key, raw = rejected_option(registry, name)
    code = train.main(["task=cifar10", f"{group}={name}", f"{group}.{key}={raw}", *outputs_in(tmp_path)])
    assert_one_line_exit_2_and_nothing_written(code, capsys.readouterr().err, tmp_path, key)


@pytest.mark.parametrize("args, message", [
    (["pooling=pma", "pooling.num_seeds=0"], "pooling.num_seeds must be >= 1"),
    (["pooling=swe", "pooling.num_refs=0"], "must be >= 1"),
    (["pooling=cswe", "pooling.tau=0"], "pooling.tau must be > 0"),
    (["pooling=cswe", "pooling.eps=-1"], "pooling.eps must be 'auto' or a number >= 0"),
    (["model.patch_size=3"], "not divisible by model.patch_size 3"),
    (["model.num_heads=3"], "model.dim 16 is not divisible by model.num_heads 3; set model.head_dim"),
    (["model.num_heads=0"], "model.num_heads must be >= 1, got 0"),  # was a ZeroDivisionError traceback
    (["model.head_dim=0"], "model.head_dim must be a positive integer or null"),
    (["task.val_fraction=1.5"], "task.val_fraction must be in (0, 1)"),
    (["device=tpu9"], "device=tpu9 is not a device"),
])
def test_options_a_constructor_rejects_exit_2_with_one_line(args, message, tmp_path, cifar_args, capsys):
    code = train.main([*cifar_args, *args, *outputs_in(tmp_path)])
    assert_one_line_exit_2_and_nothing_written(code, capsys.readouterr().err, tmp_path, message)



@pytest.mark.parametrize("task", ["lra_listops", "cifar10", "iwslt14"])
def test_an_uneven_head_split_is_refused_before_any_data_is_prepared(task, tmp_path, capsys):
    """Without the early check, lra_listops generated its 96,000 trees (minutes) and cifar10 tried its download
    before the attention layers refused the width."""
    data = tmp_path / "data"
    data.mkdir()
    code = train.main([f"task={task}", "model.dim=30", "model.num_heads=4", f"data.root={data}",
                       *outputs_in(tmp_path)])
    assert_one_line_exit_2_and_nothing_written(code, capsys.readouterr().err, tmp_path,
                                               "model.dim 30 is not divisible by model.num_heads 4")
    assert not any(data.iterdir())  # nothing generated, downloaded or extracted
    cfg = train.load_config([f"task={task}", "model.dim=30", "model.num_heads=4", "model.head_dim=8"])
    assert cfg.model.options["head_dim"] == 8  # an explicit head width makes any split valid
