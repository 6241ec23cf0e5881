"""LapSum soft permutations (Struski et al., "LapSum – One Method to Differentiate Them All", ICML 2025),
the relaxation of the current Constrained SWE code, as a `relaxation` of the sliced poolings.

F is the Laplace CDF (F(z) = ½eᶻ for z <= 0, 1 − ½e⁻ᶻ above) and α > 0 a temperature (larger = softer).
For k = 1..n−1 the threshold b_k solves Σ_i F((b_k − s_i)/α) = k, and q_k[i] = F((b_k − s_i)/α) ∈ [0, 1]
is element i's soft membership of the k smallest values (Σ_i q_k[i] = k). With q_0 = 0 and q_n = 1, row k
of the soft permutation is q_{k+1} − q_k (rank k, ascending): every row and every column sums to 1, every
entry is >= 0 (b_k grows with k), and as α → 0 it becomes the sorting permutation.

b_k in closed form: S(b) = Σ_i F((b − s_i)/α) increases with b, and between consecutive sorted values, j of
them below b, S(b) = k is the quadratic ½ B_j y² + (j − k) y − ½ A_j = 0 in y = e^{b/α}, with prefix sums
A_j = Σ_{i<=j} e^{s_(i)/α}, B_j = Σ_{i>j} e^{−s_(i)/α}. S at the sorted values themselves gives each k its
interval j (a binary search), whose root is taken in the log domain (no overflow for small α): O(n log n).
The gradient is the implicit one, db_k/ds_i = f_i / Σ_j f_j (f the Laplace density at (b_k − s_i)/α).

Cost: O(n²) time and memory per set and slice (the n × n matrix is formed), unlike SoftSort's O(n) memory.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def laplace_cdf_and_density(z: Tensor) -> tuple[Tensor, Tensor]:
    """F(z) and f(z) = ½e^{−|z|} with one exponential."""
    half = 0.5 * torch.exp(-z.abs())
    return torch.where(z <= 0, half, 1 - half), half


def lapsum_thresholds(sorted_values: Tensor, valid_ranks: Tensor, temperature: float) -> Tensor:
    """(…, n−1) thresholds b_k, k = 1..n−1, detached; sorted_values (…, n) ascending with valid ranks first,
    valid_ranks (…, n) bool. Thresholds k >= n_b are meaningless (their rows are fixed by the caller)."""
    with torch.no_grad():
        n = sorted_values.shape[-1]
        scaled = sorted_values / temperature
        minus_inf = torch.full_like(scaled[..., :1], -math.inf)
        low = torch.logcumsumexp(torch.where(valid_ranks, scaled, -math.inf), dim=-1)  # log A_j, j = 1..n
        log_a = torch.cat([minus_inf, low], dim=-1)  # (…, n+1), j = 0..n
        high = torch.logcumsumexp(torch.where(valid_ranks, -scaled, -math.inf).flip(-1), dim=-1).flip(-1)
        log_b = torch.cat([high, minus_inf], dim=-1)  # (…, n+1) log B_j
        ranks = torch.arange(1, n + 1, device=scaled.device, dtype=scaled.dtype)  # j = 1..n
        at_sorted = ranks - 0.5 * torch.exp(low - scaled) + 0.5 * torch.exp(high.roll(-1, -1) + scaled)  # S(s_j)
        at_sorted[..., -1] = n - 0.5 * torch.exp(low[..., -1] - scaled[..., -1])  # B_n = 0
        at_sorted = torch.where(valid_ranks, at_sorted, math.inf)  # (…, n) non-decreasing
        targets = torch.arange(1, n, device=scaled.device, dtype=scaled.dtype).expand(*scaled.shape[:-1], n - 1)
        segment = torch.searchsorted(at_sorted.contiguous(), targets.contiguous(), right=True)  # (…, n−1) j_k
        log_a, log_b = log_a.gather(-1, segment), log_b.gather(-1, segment)
        gap = targets - segment.to(scaled.dtype)  # c = k − j
        log_gap = gap.abs().log()  # −inf where c = 0
        root = torch.logaddexp(log_gap, 0.5 * torch.logaddexp(2 * log_gap, log_a + log_b))  # log(|c| + √(c² + AB))
        return temperature * torch.where(gap >= 0, root - log_b, log_a - root)  # α log y


def lapsum_matrix(anchors: Tensor, values: Tensor, padding_mask: Tensor | None, temperature: float) -> Tensor:
    """(…, n, n) soft permutation P[k, i] (rank k ascending, element i) of `values` (…, n).

    anchors: the same values sorted ascending, valid first; padding_mask broadcastable to values, True =
    padded: padded elements get no weight and rows of padded ranks are zero.
    """
    n = values.shape[-1]
    valid = torch.ones_like(values, dtype=torch.bool) if padding_mask is None else ~padding_mask.expand_as(values)
    count = valid.sum(-1, keepdim=True)  # (…, 1)
    valid_ranks = torch.arange(n, device=values.device) < count  # (…, n)
    targets = torch.arange(1, n, device=values.device, dtype=values.dtype)  # k
    meaningful = targets < count  # (…, n−1): k < n_b
    roots = torch.where(meaningful, lapsum_thresholds(anchors.detach(), valid_ranks, temperature), 0.0)
    cdf, density = laplace_cdf_and_density((roots.unsqueeze(-1) - values.unsqueeze(-2)) / temperature)  # (…, n−1, n)
    cdf, density = torch.where(valid.unsqueeze(-2), cdf, 0.0), torch.where(valid.unsqueeze(-2), density, 0.0).detach()
    # the roots' implicit gradient: one Newton step on Σ_i F = k (value 0: the roots are exact)
    total_density = density.sum(-1).clamp_min(torch.finfo(values.dtype).tiny)  # (…, n−1)
    newton = torch.where(meaningful, temperature * (targets - cdf.sum(-1)) / total_density, 0.0)
    moved = (newton - newton.detach()).unsqueeze(-1) / temperature  # (…, n−1, 1)
    members = cdf + density * moved  # q_k[i]; value F, gradient through the roots too
    full = valid.unsqueeze(-2).to(values.dtype)  # (…, 1, n) q_k for k >= n_b
    members = torch.where(meaningful.unsqueeze(-1) & valid.unsqueeze(-2), members, full.expand_as(members))
    cumulative = torch.cat([torch.zeros_like(full), members, full], dim=-2)  # (…, n+1, n): q_0 .. q_n
    return cumulative[..., 1:, :] - cumulative[..., :-1, :]  # (…, n, n)


def lapsum_apply(anchors: Tensor, values: Tensor, padding_mask: Tensor | None, temperature: float,
                 payload: Tensor) -> Tensor:
    """P @ payload with the LapSum soft permutation (the `softsort_apply` signature; see sliced.py)."""
    return lapsum_matrix(anchors, values, padding_mask, temperature) @ payload.to(values.dtype)
