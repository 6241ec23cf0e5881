"""LOTFormer (arXiv 2509.23436) against its definition, POT's log-domain Sinkhorn and a dense float64 form.

The generic registry tests cover shapes, gradients, padding invariance, forward == matrix @ v and the
causal refusal; these pin the marginals, the rank, the two transports, the glued output with
cross-attention and padding, the mass options and the O((n+m)·r·D) memory of the forward path.
"""
from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attention import build_attention
from lab.registry import ConfigError

B, H, D = 2, 2, 8
F64 = torch.float64


def make(dtype=F64, random_masses: bool = True, **options):
    torch.manual_seed(0)
    core = build_attention("lotformer", num_heads=H, head_dim=D, **options).to(dtype)
    if random_masses and core.learn_masses:  # non-uniform b, so gluing with the wrong masses would show
        with torch.no_grad():
            core.mass_logits.normal_(0.0, 0.5)
    return core


def tensors(*sizes: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g, dtype=F64) for n in sizes]


@pytest.mark.parametrize("nq, nk", [(10, 10), (6, 11)], ids=["self", "cross"])
def test_odd_half_steps_give_exact_rows_and_even_give_exact_columns(nq, nk, padding):
    q, k = tensors(nq, nk)
    valid_q, valid_k = [nq, nq - 3], [nk, nk - 4]
    masks = dict(key_padding_mask=padding(nk, valid_k), query_padding_mask=padding(nq, valid_q))
    rows_exact = make(half_steps=5, num_pivots=4).attention_matrix(q, k, **masks)
    columns_exact = make(half_steps=4, num_pivots=4).attention_matrix(q, k, **masks)
    for b in range(B):
        n, m = valid_q[b], valid_k[b]
        rows = rows_exact[b, :, :n, :m].sum(-1)
        columns = columns_exact[b, :, :n, :m].sum(-2)
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)
        torch.testing.assert_close(columns, torch.full_like(columns, n / m), atol=1e-5, rtol=0)
        for matrix in (rows_exact, columns_exact):
            assert matrix[b, :, n:, :].abs().sum() == 0 and matrix[b, :, :, m:].abs().sum() == 0


def test_rows_are_exact_in_float32_too():
    q, k = (t.float() for t in tensors(64, 64))
    matrix = make(torch.float32).attention_matrix(q, k)
    torch.testing.assert_close(matrix.sum(-1), torch.ones(B, H, 64), atol=1e-5, rtol=0)


def test_rank_is_at_most_the_number_of_pivots():
    q, k = tensors(24, 24)
    matrix = make(num_pivots=4).attention_matrix(q, k)
    assert (torch.linalg.matrix_rank(matrix) <= 4).all()
    assert (torch.linalg.matrix_rank(make(num_pivots=12).attention_matrix(q, k)) > 4).all()


def test_one_half_step_is_softmax_through_the_pivots(padding):
    """T = 1: A_ij = Σ_t softmax_t(S¹_it/ε + log b_t) · softmax_j(S²_tj/ε) over valid keys (nested softmax)."""
    q, k = tensors(7, 9)
    mask = padding(9, [9, 6])
    core = make(half_steps=1, eps=0.7)
    matrix = core.attention_matrix(q, k, key_padding_mask=mask)
    pivots, log_masses = core.pivots.detach(), core.log_pivot_masses().detach()
    to_pivots = (q @ pivots.transpose(-1, -2) / (0.7 * D ** 0.5) + log_masses[:, None, :]).softmax(-1)
    key_scores = pivots @ k.transpose(-1, -2) / (0.7 * D ** 0.5)  # (B, H, r, Nk)
    to_keys = key_scores.masked_fill(mask[:, None, None, :], -torch.inf).softmax(-1)
    torch.testing.assert_close(matrix, to_pivots @ to_keys, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("nq, nk", [(9, 9), (7, 12)], ids=["self", "cross"])
def test_both_transports_match_pot_sinkhorn_log_at_convergence(nq, nk, padding):
    q, k = tensors(nq, nk)
    valid_q, valid_k = [nq, nq - 2], [nk, nk - 3]
    core = make(half_steps=61, eps=0.5)
    query_plan, key_plan, log_masses, _ = core.transport_plans(
        q, k, key_padding_mask=padding(nk, valid_k), query_padding_mask=padding(nq, valid_q))
    masses = log_masses.detach().exp().numpy()  # (H, r)
    pivots = core.pivots.detach()
    for b in range(B):
        for h in range(H):
            n, m = valid_q[b], valid_k[b]
            query_cost = -(q[b, h, :n] @ pivots[h].T / D ** 0.5).numpy()  # (n, r)
            key_cost = -(pivots[h] @ k[b, h, :m].T / D ** 0.5).numpy()  # (r, m)
            expected_q = ot.sinkhorn(np.full(n, 1 / n), masses[h], query_cost, reg=0.5, method="sinkhorn_log",
                                     numItermax=100_000, stopThr=1e-14)
            expected_k = ot.sinkhorn(masses[h], np.full(m, 1 / m), key_cost, reg=0.5, method="sinkhorn_log",
                                     numItermax=100_000, stopThr=1e-14)
            np.testing.assert_allclose(query_plan[b, h, :n].detach().numpy(), expected_q, rtol=1e-6, atol=1e-10)
            np.testing.assert_allclose(key_plan[b, h, :, :m].detach().numpy(), expected_k, rtol=1e-6, atol=1e-10)
            assert query_plan[b, h, n:].abs().sum() == 0 and key_plan[b, h, :, m:].abs().sum() == 0


def test_forward_equals_dense_glued_coupling_with_cross_attention_and_padding_on_both_sides(padding):
    q, k, v = tensors(6, 11, 11)
    valid_q, valid_k = [6, 4], [11, 7]
    masks = dict(key_padding_mask=padding(11, valid_k), query_padding_mask=padding(6, valid_q))
    core = make(num_pivots=3)
    out = core(q, k, v, **masks)
    query_plan, key_plan, log_masses, _ = core.transport_plans(q, k, **masks)
    for b in range(B):
        n, m = valid_q[b], valid_k[b]
        for h in range(H):
            glued = query_plan[b, h, :n] @ torch.diag((-log_masses[h]).exp()) @ key_plan[b, h, :, :m]  # (n, m)
            torch.testing.assert_close(glued.sum(), torch.tensor(1.0, dtype=F64))
            torch.testing.assert_close(out[b, h, :n], n * glued @ v[b, h, :m], atol=1e-12, rtol=1e-10)
        assert out[b, :, n:].abs().sum() == 0
    short = core(q[1:, :, :4], k[1:, :, :7], v[1:, :, :7])  # the padded sequence without its padding
    torch.testing.assert_close(out[1:, :, :4], short, atol=1e-12, rtol=1e-10)


def test_gradients_reach_pivots_and_mass_logits_finite_with_padding(padding):
    core = make(dtype=torch.float32)
    q, k, v = (t.float().requires_grad_() for t in tensors(8, 8, 8))
    out = core(q, k, v, key_padding_mask=padding(8, [8, 5]))
    (out * torch.randn_like(out)).sum().backward()
    for tensor in (q, k, v, core.pivots, core.mass_logits):
        assert torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0
    assert k.grad[1, :, 5:].abs().sum() == 0 and v.grad[1, :, 5:].abs().sum() == 0


def test_fixed_masses_stay_uniform_and_are_not_trained():
    core = make(learn_masses=False)
    assert "mass_logits" not in dict(core.named_parameters())
    assert "mass_logits" in dict(core.named_buffers())
    torch.testing.assert_close(core.log_pivot_masses().exp(), torch.full((H, 32), 1 / 32, dtype=F64))
    q, k, v = tensors(5, 5, 5)
    core(q, k, v).sum().backward()
    assert core.pivots.grad is not None and core.mass_logits.grad is None


def test_sequence_without_valid_keys_attends_to_nothing_without_nan(padding):
    core = make()
    q, k, v = (t.requires_grad_() for t in tensors(4, 6, 6))
    out = core(q, k, v, key_padding_mask=padding(6, [6, 0]))
    assert out[1].abs().sum() == 0 and out[0].abs().sum() > 0
    out.square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, core.pivots, core.mass_logits))


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces, forward and backward."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in (result if isinstance(result, (tuple, list)) else (result,)):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return result


def test_forward_and_backward_never_form_an_n_by_m_tensor():
    n, heads, dim, pivots = 4096, 1, 8, 4
    core = build_attention("lotformer", num_heads=heads, head_dim=dim, num_pivots=pivots)
    q, k, v = (torch.randn(1, heads, n, dim, requires_grad=True) for _ in range(3))
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[:, -100:] = True
    with LargestTensor() as probe:
        core(q, k, v, key_padding_mask=mask).sum().backward()
    assert probe.largest <= heads * n * max(dim, pivots), probe.largest  # linear in n; n·m = 16.8M


@pytest.mark.parametrize("options", [{"num_pivots": 0}, {"half_steps": 0}, {"eps": 0.0},
                                     {"mass_temperature": -1.0}])
def test_invalid_options_are_config_errors(options):
    with pytest.raises(ConfigError, match=next(iter(options))):
        make(**options)
