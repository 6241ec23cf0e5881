"""Attention diagnostics: the statistics against their definitions, capture through a real block, cswe slices."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attention import MultiHeadAttention
from attention.pooling import PoolingSpec, build_pooling
from lab.diagnostics import attention_statistics, capture


def test_uniform_attention_has_log_n_entropy_and_exact_marginals():
    n = 5
    stats = attention_statistics(torch.full((1, 2, n, n), 1.0 / n), None)
    assert stats["row_entropy"] == pytest.approx(math.log(n))
    assert stats["row_sum_max_dev"] < 1e-6 and stats["col_sum_max_dev"] < 1e-6


def test_padding_is_excluded_from_the_marginals():
    # 3 valid tokens with uniform attention among them; the padded row and column hold junk that must not count
    attention = torch.zeros(1, 1, 4, 4)
    attention[0, 0, :3, :3] = 1.0 / 3
    attention[0, 0, 3, :] = 7.0  # a padded query row
    mask = torch.tensor([[False, False, False, True]])
    stats = attention_statistics(attention, mask)
    assert stats["row_sum_max_dev"] < 1e-6 and stats["col_sum_max_dev"] < 1e-6
    assert stats["row_entropy"] == pytest.approx(math.log(3))


def test_a_permutation_has_zero_entropy():
    stats = attention_statistics(torch.eye(4)[[2, 0, 3, 1]].view(1, 1, 4, 4), None)
    assert stats["row_entropy"] < 1e-6 and stats["col_sum_max_dev"] < 1e-6


class TwoBlocks(nn.Module):
    def __init__(self, attention: str):
        super().__init__()
        self.first = MultiHeadAttention(16, 2, attention)
        self.second = MultiHeadAttention(16, 2, attention)

    def forward(self, x, key_padding_mask=None):
        return self.second(self.first(x, key_padding_mask=key_padding_mask), key_padding_mask=key_padding_mask)


def probe(attention: str):
    torch.manual_seed(0)
    model = TwoBlocks(attention)
    x = torch.randn(2, 12, 16)
    mask = torch.arange(12)[None, :] >= torch.tensor([[12], [9]])  # second set: 9 valid tokens
    return capture(model, lambda: model(x, key_padding_mask=mask))


def test_doubly_stochastic_attention_is_told_apart_from_softmax():
    softmax, sinkhorn, lotformer = (probe(name).metrics() for name in ("softmax", "sinkhorn", "lotformer"))
    assert {"attention/first/row_entropy", "attention/second/col_sum_max_dev"} <= set(softmax)
    assert softmax["attention/row_sum_max_dev"] < 1e-5 and softmax["attention/col_sum_max_dev"] > 0.1
    assert sinkhorn["attention/row_sum_max_dev"] < 1e-4  # 3 half-steps ending on rows: rows exact, columns close
    assert sinkhorn["attention/col_sum_max_dev"] < softmax["attention/col_sum_max_dev"] / 5
    assert lotformer["attention/row_sum_max_dev"] < 1e-4 and lotformer["attention/col_sum_max_dev"] < 1e-3


def test_causal_blocks_are_not_measured():
    torch.manual_seed(0)
    encoder, decoder = MultiHeadAttention(16, 2, "softmax"), MultiHeadAttention(16, 2, "softmax", causal=True)
    x = torch.randn(2, 6, 16)
    found = capture(nn.ModuleDict({"encoder": encoder, "decoder": decoder}), lambda: decoder(encoder(x)))
    assert [name for name, _, _ in found.attention] == ["encoder"]


def test_probe_figures_cover_every_block():
    found = probe("softmax")
    assert [name for name, _, _ in found.attention] == ["first", "second"]
    assert list(found.figures()) == ["attention_maps"]
    figure = found.figures()["attention_maps"]()
    assert len(figure.axes) == 2 * 2 * 2  # blocks x heads, each with its colour bar


def test_cswe_slice_diagnostics_report_weights_and_violations():
    torch.manual_seed(0)
    pooling = build_pooling(PoolingSpec("cswe", {"num_slices": 6, "num_refs": 5, "eps": 0.5}), dim=4)
    x = torch.randn(3, 7, 4)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[1, 5:] = True
    found = capture(pooling, lambda: pooling(x, mask))
    ((_, vectors),) = found.slices
    assert set(vectors) == {"weight", "lambda", "violation"} and all(v.shape == (6,) for v in vectors.values())
    assert float(vectors["weight"].sum()) == pytest.approx(1.0)
    sets = pooling.float_sets(x, mask)
    costs = pooling.hard_slice_costs(sets, pooling.slice_sets(sets, mask)).mean(0)
    assert torch.allclose(vectors["violation"], costs - 0.5)
    assert "slice_diagnostics" in found.figures() and "slices/model/violation_max" in found.metrics()

