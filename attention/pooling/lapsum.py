"""LapSum soft permutations (Struski et al., "LapSum – One Method to Differentiate Them All", ICML 2025),
the relaxation of the current Constrained SWE code, as a `relaxation` of the sliced poolings.

F is the Laplace CDF (F(z) = ½eᶻ for z <= 0, 1 − ½e⁻ᶻ above) and α > 0 a temperature (larger = softer).
For k = 1..n−1 the threshold b_k solves Σ_i F((b_k − s_i)/α) = k, and q_k[i] = F((b_k − s_i)/α) ∈ [0, 1]
is element i's soft membership of the k smallest values (Σ_i q_k[i] = k). With q_0 = 0 and q_n = 1, row k
of the soft permutation is q_{k+1} − q_k (rank k, ascending): every row and every column sums to 1, every
entry is >= 0 (b_k grows with k), and as α → 0 it becomes the sorting permutation.

b_k in closed form: between consecutive sorted values, j of them below b, the equation is the quadratic
½ B_j y² + (j − k) y − ½ A_j = 0 in y = e^{b/α}, A_j = Σ_{i<=j} e^{s_(i)/α}, B_j = Σ_{i>j} e^{−s_(i)/α};
it is solved for every j in the log domain (no overflow for small α) and the root that falls inside its
own interval is kept. Its gradient is the implicit one, db_k/ds_i = f_i / Σ_j f_j (f the Laplace density
at (b_k − s_i)/α), obtained by one Newton step from the detached root.

Cost: O(n²) time and memory per set and slice (the n × n matrix is formed), unlike SoftSort's O(n) memory.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def laplace_cdf(z: Tensor) -> Tensor:
    return torch.where(z <= 0, 0.5 * torch.exp(z.clamp(max=0)), 1 - 0.5 * torch.exp(-z.clamp(min=0)))


def lapsum_thresholds(sorted_values: Tensor, valid_ranks: Tensor, temperature: float) -> Tensor:
    """(…, n−1) thresholds b_k, k = 1..n−1, detached; sorted_values (…, n) ascending with valid ranks first,
    valid_ranks (…, n) bool. Thresholds k >= n_b are meaningless (their rows are fixed by the caller)."""
    with torch.no_grad():
        n = sorted_values.shape[-1]
        scaled = sorted_values / temperature
        minus_inf = torch.tensor(-math.inf, dtype=scaled.dtype, device=scaled.device)
        low = torch.logcumsumexp(torch.where(valid_ranks, scaled, minus_inf), dim=-1)  # log A_j, j = 1..n
        log_a = torch.cat([minus_inf.expand(*low.shape[:-1], 1), low], dim=-1)  # (…, n+1), j = 0..n
        high = torch.logcumsumexp(torch.where(valid_ranks, -scaled, minus_inf).flip(-1), dim=-1).flip(-1)
        log_b = torch.cat([high, minus_inf.expand(*high.shape[:-1], 1)], dim=-1)  # (…, n+1) log B_j
        segments = torch.arange(n + 1, device=scaled.device, dtype=scaled.dtype)  # j
        targets = torch.arange(1, n, device=scaled.device, dtype=scaled.dtype)  # k
        gap = targets[:, None] - segments[None, :]  # (n−1, n+1) c = k − j
        log_gap = gap.abs().log()  # −inf where c = 0
        log_ab = (log_a + log_b).unsqueeze(-2)  # (…, 1, n+1)
        root = torch.logaddexp(log_gap, 0.5 * torch.logaddexp(2 * log_gap, log_ab))  # log(|c| + sqrt(c² + AB))
        log_y = torch.where(gap >= 0, root - log_b.unsqueeze(-2), log_a.unsqueeze(-2) - root)  # (…, n−1, n+1)
        thresholds = temperature * log_y
        inf = torch.full_like(sorted_values[..., :1], math.inf)
        count = valid_ranks.sum(-1, keepdim=True)  # (…, 1)
        upper = torch.where(valid_ranks, sorted_values, inf)  # s_(j+1) for j = 0..n−1, +inf past the valid ones
        lower = torch.cat([-inf, sorted_values], dim=-1)  # (…, n+1) s_(j)
        upper = torch.cat([upper, inf], dim=-1)  # (…, n+1)
        outside = (lower.unsqueeze(-2) - thresholds).clamp_min(0) + (thresholds - upper.unsqueeze(-2)).clamp_min(0)
        usable = segments <= count  # (…, n+1): j <= n_b
        outside = torch.where(usable.unsqueeze(-2) & ~outside.isnan(), outside, math.inf)
        choice = outside.argmin(dim=-1, keepdim=True)  # (…, n−1, 1)
        return thresholds.gather(-1, choice).squeeze(-1)  # (…, n−1)


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
    detached = torch.where(meaningful, lapsum_thresholds(anchors.detach(), valid_ranks, temperature), 0.0)
    z = (detached.unsqueeze(-1) - values.unsqueeze(-2)) / temperature  # (…, n−1, n)
    density = torch.where(valid.unsqueeze(-2), 0.5 * torch.exp(-z.abs()), 0.0)
    mass = torch.where(valid.unsqueeze(-2), laplace_cdf(z), 0.0).sum(-1)  # (…, n−1) = k at the root
    newton = temperature * (targets - mass) / density.detach().sum(-1).clamp_min(torch.finfo(values.dtype).tiny)
    newton = torch.where(meaningful, newton, 0.0)
    thresholds = detached + (newton - newton.detach())  # value: the root; gradient: the implicit one
    members = laplace_cdf((thresholds.unsqueeze(-1) - values.unsqueeze(-2)) / temperature)  # (…, n−1, n)
    full = valid.unsqueeze(-2).to(values.dtype)  # (…, 1, n) q_k for k >= n_b
    members = torch.where(meaningful.unsqueeze(-1) & valid.unsqueeze(-2), members, full.expand_as(members))
    cumulative = torch.cat([torch.zeros_like(full), members, full], dim=-2)  # (…, n+1, n): q_0 .. q_n
    return cumulative[..., 1:, :] - cumulative[..., :-1, :]  # (…, n, n)


def lapsum_apply(anchors: Tensor, values: Tensor, padding_mask: Tensor | None, temperature: float,
                 payload: Tensor) -> Tensor:
    """P @ payload with the LapSum soft permutation (the `softsort_apply` signature; see sliced.py)."""
    return lapsum_matrix(anchors, values, padding_mask, temperature) @ payload.to(values.dtype)
