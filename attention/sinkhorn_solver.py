"""Log-domain Sinkhorn for entropic optimal transport, shared by the `sinkhorn` and `lotformer` cores.

Problem (Cuturi 2013; used as attention by Sander et al. 2022, "Sinkformers", and by LOTFormer,
arXiv 2509.23436): for similarity scores S (..., n, m), i.e. cost C = −S, and marginals μ (..., n),
ν (..., m),

    P = argmin_{P ∈ Π(μ, ν)} ⟨C, P⟩ − ε·H(P),    log P_ij = S_ij/ε + f_i + g_j,

with dimensionless potentials f, g. A *half-step* re-fits one marginal exactly:

    row update     f_i = log μ_i − LSE_j(S_ij/ε + g_j)    (rows of P now sum to μ)
    column update  g_j = log ν_j − LSE_i(S_ij/ε + f_i)    (columns of P now sum to ν)

starting with a row update from g = log ν, so an odd number of half-steps ends with exact rows and
an even number with exact columns. Starting from g = log ν rather than g = 0 changes the plan only by
a constant absorbed by the first row update, except that padded columns start at zero mass.

Zero mass (padding) is a log-mass of −inf. Its potential becomes −inf, its row/column of the plan is
exactly 0, and every log-sum-exp still has a finite term (a valid token on the other side), so neither
values nor gradients contain NaN: the backward weight of a −inf term is exp(−inf − finite) = 0.
A sequence with no valid token at all has no uniform measure; `log_uniform_mass` spreads it over all
positions instead (finite everywhere) and reports a count of 0, which zeroes its attention.

Everything is unrolled for autograd; the iteration count is fixed (no convergence test, no host sync).
"""
from __future__ import annotations

import torch
from torch import Tensor


def log_uniform_mass(padding_mask: Tensor | None, size: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The uniform probability measure over the valid tokens of each sequence.

    padding_mask: bool (B, size), True = padding (zero mass), or None (all valid).
    Returns log-masses (B|1, 1, size), −inf at padding, broadcastable against (B, H, size), and the
    number of valid tokens as a float tensor (B|1, 1, 1, 1), broadcastable against (B, H, N, D).
    """
    if padding_mask is None:
        count = torch.full((1, 1, 1, 1), float(size), dtype=like.dtype, device=like.device)
        return (-count.log()).view(1, 1, 1).expand(1, 1, size), count
    valid = ~padding_mask  # (B, size)
    count = valid.sum(-1).to(like.dtype)  # (B,)
    support = valid | (count == 0)[:, None]  # an all-padding sequence: spread over every position
    log_mass = (-support.sum(-1).to(like.dtype).log())[:, None].expand(-1, size)  # (B, size)
    log_mass = log_mass.masked_fill(~support, float("-inf"))
    return log_mass[:, None, :], count.view(-1, 1, 1, 1)


def log_sinkhorn(scores: Tensor, log_row_mass: Tensor, log_col_mass: Tensor, eps: float,
                 half_steps: int) -> Tensor:
    """log P for the entropic OT plan between the two measures, after `half_steps` Sinkhorn half-steps.

    scores:       (..., n, m) similarities S (the transport cost is −S).
    log_row_mass: (..., n) log μ, −inf for zero mass; broadcastable against scores[..., :, 0].
    log_col_mass: (..., m) log ν, likewise.
    Returns log P (..., n, m); P = exp(log P) has row sums μ exactly when `half_steps` is odd and
    column sums ν exactly when it is even.
    """
    if half_steps < 1:
        raise ValueError(f"Sinkhorn needs at least one half-step, got {half_steps}")
    logits = scores / eps  # (..., n, m)
    col_potential = log_col_mass  # g (..., m)
    row_potential = None  # f (..., n), set by the first (row) half-step
    for step in range(half_steps):
        if step % 2 == 0:
            row_potential = log_row_mass - torch.logsumexp(logits + col_potential.unsqueeze(-2), dim=-1)
        else:
            col_potential = log_col_mass - torch.logsumexp(logits + row_potential.unsqueeze(-1), dim=-2)
    return logits + row_potential.unsqueeze(-1) + col_potential.unsqueeze(-2)  # (..., n, m)
