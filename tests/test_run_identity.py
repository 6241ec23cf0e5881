"""Run names say what differs from the task's defaults; the identity tags are always set."""
from __future__ import annotations

import pytest

from train import load_config


@pytest.mark.parametrize("args, name", [
    (["task=cifar10"], "cifar10-softmax-s0"),
    (["task=cifar10", "pooling=mean"], "cifar10-softmax-mean-s0"),
    (["task=cifar10", "pooling=swe", "seed=3"], "cifar10-softmax-swe-s3"),
    ([], "protein-lotformer-s0"),
    (["pooling=cswe"], "protein-lotformer-s0"),  # the task's own pooling is not named
    (["pooling=mean"], "protein-lotformer-mean-s0"),
    (["experiment=protein_esm"], "protein-lotformer-protein_esm-s0"),  # the preset's backbone is its default
    (["experiment=protein_esm", "pooling=swe"], "protein-lotformer-swe-protein_esm-s0"),
    (["task=modelnet40", "model=set_transformer", "attention=esp"], "modelnet40-esp-set_transformer-s0"),
    (["task=modelnet", "experiment=modelnet_set_transformer"], "modelnet40-softmax-modelnet_set_transformer-s0"),
    (["task=cifar10", "run_name=my-ablation"], "my-ablation"),
])
def test_run_name_names_the_non_default_choices(args, name):
    assert load_config(args).run_name == name


def test_poolings_of_one_task_attention_and_seed_get_different_names():
    names = {load_config(["task=protein", f"pooling={p}"]).run_name for p in ("mean", "swe", "cswe", "max")}
    assert len(names) == 4


def test_the_experiment_is_recorded_in_the_config():
    assert load_config(["experiment=protein_esm"]).experiment == "protein_esm"
    assert load_config([]).experiment is None
