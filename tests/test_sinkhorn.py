"""Sinkhorn attention (Sinkformer, Sander et al. 2022) against its definition and POT's log-domain Sinkhorn.

The generic registry tests cover shapes, gradients, padding invariance and forward == matrix @ v;
these pin the marginals, the iteration semantics and the zero-mass padding.
"""
from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from attention import build_attention
from lab.registry import ConfigError

B, H, D = 2, 2, 8
F64 = torch.float64


def make(**options):
    return build_attention("sinkhorn", num_heads=H, head_dim=D, **options).to(F64)


def tensors(*sizes: int, seed: int = 1, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g, dtype=F64) * scale for n in sizes]


@pytest.mark.parametrize("iters", [1, 3, 7])
@pytest.mark.parametrize("nq, nk", [(10, 10), (6, 11)], ids=["self", "cross"])
def test_odd_iterations_give_exact_row_sums_and_no_mass_on_padding(iters, nq, nk, padding):
    q, k = tensors(nq, nk, scale=2.0)
    valid_q, valid_k = [nq, nq - 3], [nk, nk - 4]
    matrix = make(iters=iters).attention_matrix(q, k, key_padding_mask=padding(nk, valid_k),
                                                query_padding_mask=padding(nq, valid_q))
    for b in range(B):
        rows = matrix[b, :, :valid_q[b], :valid_k[b]].sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-12, rtol=0)
        assert matrix[b, :, valid_q[b]:, :].abs().sum() == 0
        assert matrix[b, :, :, valid_k[b]:].abs().sum() == 0


def test_even_iterations_give_exact_column_sums_n_over_m():
    q, k = tensors(6, 9, scale=2.0)
    matrix = make(iters=4).attention_matrix(q, k)
    torch.testing.assert_close(matrix.sum(-2), torch.full((B, H, 9), 6 / 9, dtype=F64), atol=1e-12, rtol=0)


def test_column_sums_approach_one_as_iterations_grow():
    q, k = tensors(12, 12)
    deviations = [(make(iters=t).attention_matrix(q, k).sum(-2) - 1).abs().max().item()
                  for t in (1, 3, 5, 9, 17, 65)]
    assert all(later < earlier for earlier, later in zip(deviations, deviations[1:])), deviations
    assert deviations[0] > 0.1 and deviations[-1] < 1e-8, deviations


def test_one_iteration_is_softmax_at_temperature_eps(padding):
    q, k = tensors(7, 7)
    mask = padding(7, [7, 5])
    eps = 0.5
    matrix = make(iters=1, eps=eps).attention_matrix(q, k, key_padding_mask=mask)
    scores = (q @ k.transpose(-1, -2) / (eps * D ** 0.5)).masked_fill(mask[:, None, None, :], -torch.inf)
    expected = scores.softmax(-1).masked_fill(mask[:, None, :, None], 0.0)
    torch.testing.assert_close(matrix, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("nq, nk, eps", [(9, 9, 1.0), (7, 12, 0.5)], ids=["self", "cross"])
def test_converged_plan_matches_pot_sinkhorn_log(nq, nk, eps, padding):
    """With many half-steps n·P is n times POT's entropic plan on the same cost, valid tokens only."""
    q, k = tensors(nq, nk)
    valid_q, valid_k = [nq, nq - 2], [nk, nk - 3]
    matrix = make(iters=101, eps=eps).attention_matrix(q, k, key_padding_mask=padding(nk, valid_k),
                                                       query_padding_mask=padding(nq, valid_q))
    for b in range(B):
        for h in range(H):
            n, m = valid_q[b], valid_k[b]
            cost = -(q[b, h, :n] @ k[b, h, :m].T / D ** 0.5).numpy()  # (n, m)
            plan = ot.sinkhorn(np.full(n, 1 / n), np.full(m, 1 / m), cost, reg=eps, method="sinkhorn_log",
                               numItermax=100_000, stopThr=1e-14)
            np.testing.assert_allclose(matrix[b, h, :n, :m].numpy() / n, plan, atol=1e-6 / (n * m), rtol=1e-6)


def test_padded_tokens_change_nothing_and_get_no_gradient(padding):
    core = make()
    q, k, v = (t.requires_grad_() for t in tensors(8, 8, 8))
    mask = padding(8, [8, 5])
    out = core(q, k, v, key_padding_mask=mask)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
        assert t.grad[1, :, 5:].abs().max() == 0
    short = core(q[1:, :, :5], k[1:, :, :5], v[1:, :, :5])  # the padded sequence without its padding
    torch.testing.assert_close(out[1:, :, :5], short, atol=1e-12, rtol=1e-12)
    junk = [t.detach().clone() for t in (q, k, v)]
    for t in junk:
        t[1, :, 5:] = 1e3 * torch.randn_like(t[1, :, 5:])
    torch.testing.assert_close(core(*junk, key_padding_mask=mask), out)


def test_sequence_without_valid_keys_attends_to_nothing_without_nan(padding):
    core = make()
    q, k, v = (t.requires_grad_() for t in tensors(4, 6, 6))
    out = core(q, k, v, key_padding_mask=padding(6, [6, 0]))
    assert out[1].abs().max() == 0 and out[0].abs().sum() > 0
    out.square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert k.grad[1].abs().max() == 0 and v.grad[1].abs().max() == 0


@pytest.mark.parametrize("options", [{"iters": 0}, {"eps": 0.0}, {"eps": -1.0}])
def test_invalid_options_are_config_errors(options):
    with pytest.raises(ConfigError, match=next(iter(options))):
        make(**options)
