"""ESP attention (attention/esp.py) against independent references.

References: the direct dense formulation (`bench/esp_reference.py`: stacked per-slice plans, cdist cost),
POT's `ot.expected_sliced_plan` for hard sorts, the fixed-seed numbers of `reference/espformer.md` §5,
finite differences, and the plan's own invariants (mass, marginals, padding).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attention import build_attention
from attention.esp_function import active_plan, backward_slices, chunk_plan
from bench.esp_reference import esp_reference_attention_matrix, esp_reference_forward, soft_sort
from lab.registry import ConfigError

COSTS = ["euclidean", "sqeuclidean"]
F64 = torch.float64


def make(dtype=F64, **options):
    return build_attention("esp", num_heads=2, head_dim=4, **options).to(dtype)


def tensors(n: int, d: int = 4, dtype=F64, seed: int = 1, count: int = 3, batch: int = 2, heads: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, d, generator=g, dtype=dtype) for _ in range(count)]


def published_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """§5's input: seed 0, B = H = 2, N = 8, L = 4, q then k ~ N(0, 1)·0.5 in float32, used as the already
    scaled q, k. The core scales by L^-1/2, so it gets them times √L = 2."""
    torch.manual_seed(0)
    q = torch.randn(2, 2, 8, 4) * 0.5
    k = torch.randn(2, 2, 8, 4) * 0.5
    return q.double() * 2.0, k.double() * 2.0


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["f64", "f32"])
def test_equals_the_direct_formulation_with_padding(cost, dtype, tol, padding):
    core = make(dtype, cost=cost)
    q, k, v = tensors(12, dtype=dtype)
    valid = [12, 7]
    mask = padding(12, valid)
    matrix = core.attention_matrix(q, k, key_padding_mask=mask)
    out = core(q, k, v, key_padding_mask=mask)
    for b, n in enumerate(valid):  # the reference on the valid tokens alone
        reference = esp_reference_attention_matrix(q[b:b + 1, :, :n].double(), k[b:b + 1, :, :n].double(),
                                                   cost=cost)[0]
        torch.testing.assert_close(matrix[b, :, :n, :n].double(), reference, atol=tol, rtol=0)
        torch.testing.assert_close(out[b, :, :n].double(), reference @ v[b, :, :n].double(), atol=tol, rtol=0)
    torch.testing.assert_close(core(q, k, v).double(), esp_reference_forward(q.double(), k.double(), v.double(),
                                                                             cost=cost), atol=tol, rtol=0)


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("inv_temperature", [10.0, 0.5])
def test_gradients_equal_autograd_of_the_direct_formulation(cost, inv_temperature):
    core = make(cost=cost, inv_temperature=inv_temperature)
    q, k, v = (t.requires_grad_() for t in tensors(7))
    weights = torch.randn(2, 2, 7, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    ours = torch.autograd.grad((core(q, k, v) * weights).sum(), (q, k, v))
    direct = esp_reference_forward(q, k, v, cost=cost, inv_temperature=inv_temperature)
    reference = torch.autograd.grad((direct * weights).sum(), (q, k, v))
    for mine, theirs in zip(ours, reference):
        torch.testing.assert_close(mine, theirs, atol=1e-8, rtol=1e-9)


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("slice_chunk", [3, None])
def test_backward_skips_negligible_slices_without_changing_gradients(cost, slice_chunk, padding):
    """Peaked Gibbs weights: backward visits only the slices `backward_slices` keeps (packed into ranges and
    index lists), and the gradients still equal autograd through the dense attention matrix."""
    core = build_attention("esp", num_heads=1, head_dim=8, cost=cost, inv_temperature=50.0,
                           slice_chunk=slice_chunk).double()
    q, k, v = (t.requires_grad_() for t in tensors(24, d=8, batch=1, heads=1))
    mask = padding(24, [21])
    kept = backward_slices(core.slice_weights(q, k, key_padding_mask=mask))
    assert 2 <= kept.sum() <= 8 - 2  # one group: the union over a chunk's groups is this head's own set
    weights = torch.randn(1, 1, 24, 8, dtype=F64, generator=torch.Generator().manual_seed(4))
    ours = torch.autograd.grad((core(q, k, v, key_padding_mask=mask) * weights).sum(), (q, k, v))
    dense = core.dense_attention_matrix(q, k, key_padding_mask=mask) @ v
    reference = torch.autograd.grad((dense * weights).sum(), (q, k, v))
    for mine, theirs in zip(ours, reference):
        torch.testing.assert_close(mine, theirs, atol=1e-8, rtol=1e-9)


def test_active_plan_visits_exactly_the_active_slices():
    plan = chunk_plan(groups=2, slices=8, n=4, slice_chunk=3)
    active = torch.tensor([[1, 0, 1, 1, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)[:, None]
    visited = {group: [] for group in range(2)}
    for groups, axes in active_plan(plan, active):
        indices = list(range(8))[axes] if isinstance(axes, slice) else axes.tolist()
        assert len(indices) <= 3
        for group in range(groups.start, groups.stop):
            visited[group] += indices
    assert visited == {0: [0, 2, 3, 7], 1: [0, 2, 3, 7]}  # the union over a chunk's groups


@pytest.mark.parametrize("cost", COSTS)
def test_gradcheck_of_the_hand_written_backward(cost, padding):
    """Finite differences need a smooth function: a milder sort temperature than the default 1e-3."""
    core = build_attention("esp", num_heads=1, head_dim=3, cost=cost, sort_temperature=0.05,
                           inv_temperature=2.0).double()
    q, k, v = (t.requires_grad_() for t in tensors(5, d=3, batch=1, heads=1))
    assert torch.autograd.gradcheck(lambda a, b, c: core(a, b, c), (q, k, v), eps=1e-6, atol=1e-5)
    mask = padding(5, [4])
    assert torch.autograd.gradcheck(lambda a, b, c: core(a, b, c, key_padding_mask=mask), (q, k, v),
                                    eps=1e-6, atol=1e-5)


def test_published_fixed_seed_numbers():
    """reference/espformer.md §5 (seed 0, B = H = 2, N = 8, L = 4, t = 1e-3)."""
    q, k = published_inputs()
    core = build_attention("esp", num_heads=2, head_dim=4).double()
    torch.testing.assert_close(core.slice_weights(q, k)[0, 0],
                               torch.tensor([0.498, 0.088, 0.002, 0.411], dtype=F64), atol=5e-4, rtol=0)
    matrix = core.attention_matrix(q, k)
    rows = [0.999985, 1.000069, 1, 1, 1, 0.999803, 1.000143, 1]
    cols = [0.999999, 0.997286, 0.999838, 1.000897, 0.999483, 1.005230, 0.999894, 0.997374]
    torch.testing.assert_close(matrix[0, 0].sum(-1), torch.tensor(rows, dtype=F64), atol=1.5e-6, rtol=0)
    torch.testing.assert_close(matrix[0, 0].sum(-2), torch.tensor(cols, dtype=F64), atol=1.5e-6, rtol=0)
    for inv_temperature, row_dev, col_dev in [(10.0, 1.97e-4, 1.05e-1), (0.1, 2.2e-2, 3.0e-2), (0.0, 2.3e-2, 2.6e-2)]:
        matrix = build_attention("esp", num_heads=2, head_dim=4, inv_temperature=inv_temperature
                                 ).double().attention_matrix(q, k)
        assert (matrix.sum(-1) - 1).abs().max().item() == pytest.approx(row_dev, rel=0.03)
        assert (matrix.sum(-2) - 1).abs().max().item() == pytest.approx(col_dev, rel=0.03)


def test_mass_marginals_and_no_mass_across_padding(padding):
    """Total mass exactly n per head; rows ≈ 1, columns within §5's tolerance; nothing crosses padding."""
    q, k = published_inputs()
    core = build_attention("esp", num_heads=2, head_dim=4).double()
    mask = padding(8, [8, 5])  # §5: batch item 1 keeps 5 of 8 tokens
    matrix = core.attention_matrix(q, k, key_padding_mask=mask)
    for b, n in enumerate([8, 5]):
        valid = matrix[b, :, :n, :n]
        torch.testing.assert_close(valid.sum((-1, -2)), torch.full((2,), float(n), dtype=F64), atol=1e-12, rtol=0)
        assert (valid.sum(-1) - 1).abs().max() < 2.5e-4
        assert (valid.sum(-2) - 1).abs().max() < 0.11
    assert matrix[1, :, :5, 5:].abs().max() == 0 and matrix[1, :, 5:, :].abs().max() == 0
    out = core(q, k, torch.eye(8, dtype=F64).expand(2, 2, 8, 8), key_padding_mask=mask)  # G itself
    torch.testing.assert_close(out, matrix, atol=1e-12, rtol=0)


def test_inverse_temperature_limits():
    """τ = 0: the plain average of the slice plans; large τ: the plan of the cheapest slice."""
    q, k = tensors(9, count=2)
    scaled_q, scaled_k = q / 2.0, k / 2.0  # d = 4
    sorts_q, sorts_k = (soft_sort(x.transpose(-1, -2), 1e-3) for x in (scaled_q, scaled_k))  # (B, H, L, N, N)
    plans = sorts_q.transpose(-1, -2) @ sorts_k  # U_l = A_lᵀ B_l
    costs = (plans * torch.cdist(scaled_q, scaled_k)[:, :, None]).sum((-1, -2))  # (B, H, L)
    average = make(inv_temperature=0.0).attention_matrix(q, k)
    torch.testing.assert_close(average, plans.mean(2), atol=1e-12, rtol=0)
    cheapest = plans.gather(2, costs.argmin(-1)[..., None, None, None].expand(-1, -1, 1, 9, 9))[:, :, 0]
    torch.testing.assert_close(make(inv_temperature=1e7).attention_matrix(q, k), cheapest, atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [8, 16])
def test_hard_sorts_equal_pot_expected_sliced_plan(n):
    """G = n × ot.expected_sliced_plan(q, k, projections=I, metric='euclidean', beta=τ·n) (float64).

    n is a power of two: POT takes its permutation path only when 1/n sums back to exactly 1."""
    ot = pytest.importorskip("ot")
    core = make(hard=True)
    q, k = tensors(n, count=2)
    matrix = core.attention_matrix(q, k)
    out = core(q, k, torch.eye(n, dtype=F64).expand(2, 2, n, n))
    for b in range(2):
        for h in range(2):
            plan, _ = ot.expected_sliced_plan((q[b, h] / 2).numpy(), (k[b, h] / 2).numpy(), projections=np.eye(4),
                                              metric="euclidean", beta=10.0 * n)
            expected = torch.from_numpy(n * plan)
            torch.testing.assert_close(matrix[b, h], expected, atol=1e-13, rtol=0)
            torch.testing.assert_close(out[b, h], expected, atol=1e-13, rtol=0)


@pytest.mark.parametrize("cost", COSTS)
def test_hard_backward_is_the_soft_straight_through_gradient(cost, padding):
    q, k, v = (t.requires_grad_() for t in tensors(9))
    mask = padding(9, [9, 6])
    weights = torch.randn(2, 2, 9, 4, dtype=F64, generator=torch.Generator().manual_seed(5))
    core = make(cost=cost, hard=True)
    ours = torch.autograd.grad((core(q, k, v, key_padding_mask=mask) * weights).sum(), (q, k, v))
    dense = core.dense_attention_matrix(q, k, key_padding_mask=mask) @ v  # exact + soft − soft.detach()
    reference = torch.autograd.grad((dense * weights).sum(), (q, k, v))
    for mine, theirs in zip(ours, reference):
        assert torch.isfinite(mine).all() and mine.abs().sum() > 0
        torch.testing.assert_close(mine, theirs, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("cost", COSTS)
def test_near_ties_keep_values_and_gradients_finite(cost, padding):
    q, k, v = tensors(10, dtype=torch.float32)
    q[:, :, 1] = q[:, :, 0]  # exact ties in every slice
    k[:, :, 3] = k[:, :, 2] + 1e-7  # near ties
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = make(torch.float32, cost=cost)(q, k, v, key_padding_mask=padding(10, [10, 8]))
    out.square().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("cost", COSTS)
def test_slice_chunk_does_not_change_results(cost, padding):
    q, k, v = (t.requires_grad_() for t in tensors(11, d=6))
    mask = padding(11, [11, 9])
    results = []
    for chunk in (1, 4, None):
        core = build_attention("esp", num_heads=2, head_dim=6, cost=cost, slice_chunk=chunk).double()
        out = core(q, k, v, key_padding_mask=mask)
        results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_scale_by_n_multiplies_by_the_number_of_valid_tokens(padding):
    q, k, v = tensors(10)
    mask = padding(10, [10, 6])
    plain, scaled = make(), make(scale_by_n=True)
    torch.testing.assert_close(scaled.attention_matrix(q, k, key_padding_mask=mask),
                               plain.attention_matrix(q, k, key_padding_mask=mask)
                               * torch.tensor([10.0, 6.0], dtype=F64)[:, None, None, None])
    torch.testing.assert_close(scaled(q, k, v, key_padding_mask=mask)[1],
                               6.0 * plain(q, k, v, key_padding_mask=mask)[1])


def test_bad_options_and_cross_attention_are_refused():
    with pytest.raises(ConfigError, match="sort_temperature"):
        build_attention("esp", num_heads=2, head_dim=4, sort_temperature=0.0)
    with pytest.raises(ConfigError, match="euclidean"):
        build_attention("esp", num_heads=2, head_dim=4, cost="manhattan")
    with pytest.raises(ConfigError, match="slice_chunk"):
        build_attention("esp", num_heads=2, head_dim=4, slice_chunk=0)
    q, k, v = tensors(6)
    with pytest.raises(ValueError, match="cross-attention"):
        make()(q, k[:, :, :4], v[:, :, :4])

