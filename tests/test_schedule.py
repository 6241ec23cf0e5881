"""Learning-rate schedules: linear warm-up, then cosine or fairseq's inverse square root."""
import math

import pytest

from lab.config import TrainerConfig
from lab.optim import lr_at
from lab.registry import ConfigError


def test_inverse_sqrt_warms_up_linearly_then_decays_as_one_over_root_step():
    cfg = TrainerConfig(lr=5e-4, schedule="inverse_sqrt", warmup_steps=4000)
    assert lr_at(0, 10**6, cfg) == pytest.approx(5e-4 / 4000)
    assert lr_at(3999, 10**6, cfg) == pytest.approx(5e-4)  # peak at the end of warm-up
    for step in (4000, 16000, 64000):
        assert lr_at(step - 1, 10**6, cfg) == pytest.approx(5e-4 * math.sqrt(4000 / step))


def test_warmup_steps_replace_the_fraction_and_cosine_still_ends_at_its_floor():
    cfg = TrainerConfig(lr=1e-3, warmup_fraction=0.5, warmup_steps=10, min_lr_fraction=0.1)
    assert lr_at(9, 1000, cfg) == pytest.approx(1e-3)
    assert lr_at(1000, 1000, cfg) == pytest.approx(1e-4)


def test_negative_warmup_steps_are_refused():
    from train import load_config

    with pytest.raises(ConfigError, match="^trainer.warmup_steps must be >= 0, got -1$"):
        load_config(["trainer.warmup_steps=-1"])  # the range is declared next to the type (lab/config.py)
