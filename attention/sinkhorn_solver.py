"""Log-domain Sinkhorn for entropic optimal transport, shared by the `sinkhorn` and `lotformer` cores.

Problem (Cuturi 2013; used as attention by Sander et al. 2022, "Sinkformers", and by LOTFormer,
arXiv 2509.23436): for similarity scores S (..., n, m), i.e. cost C = −S, and marginals μ (..., n),
ν (..., m),

    P = argmin_{P ∈ Π(μ, ν)} ⟨C, P⟩ − ε·H(P),    log P_ij = S_ij/ε + f_i + g_j.

A *half-step* re-fits one marginal exactly by updating one potential:

    row update     f_i = log μ_i − LSE_j(S_ij/ε + g_j)    (rows of P now sum to μ)
    column update  g_j = log ν_j − LSE_i(S_ij/ε + f_i)    (columns of P now sum to ν)

starting with a row update from g = log ν, so an odd number of half-steps ends with exact rows and
an even number with exact columns. (g = log ν instead of g = 0 only shifts valid columns by a
constant, which the first row update absorbs; padded columns start with zero mass.) A caller that
stores a plan transposed starts with the column update instead (`first_update="columns"`).

Because LSE is shift-invariant, the same iteration acts on the log-plan itself:
row update  log P ← log μ_i + log_softmax_j(log P),  column update  log P ← log ν_j + log_softmax_i(log P).
That is what runs here: one fused `log_softmax` (and its fused backward) plus one broadcast add per
half-step, instead of the separate max / subtract / exp / sum passes of `logsumexp` and its backward;
the last half-step is a fused `softmax` times the marginal, which gives P without a final exp.

Zero mass (padding): callers pass log-mass −inf. A zero-mass row would then be all −inf and its
`log_softmax` NaN, so −inf is raised to the finite floor ZERO_MASS_LOG = −1e30: exp of anything near
the floor is exactly 0 (in float32 and float64), so padded rows and columns of the plan are exactly 0,
valid entries are bit-for-bit what −inf would give, and backward weights of padded entries are exactly
0 — no NaN or inf in values or gradients, even for a sequence with no valid token at all.

Everything is unrolled for autograd; the iteration count is fixed (no convergence test, no host sync).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

ZERO_MASS_LOG = -1e30  # stands for log 0; sums of up to a few of these stay finite in float32


def log_uniform_mass(padding_mask: Tensor | None, size: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The uniform probability measure over the valid tokens of each sequence.

    padding_mask: bool (B, size), True = padding (zero mass), or None (all valid).
    Returns log-masses (B|1, 1, size), −inf at padding, broadcastable against (B, H, size), and the
    number of valid tokens as a float tensor (B|1, 1, 1, 1), broadcastable against (B, H, N, D).
    """
    if padding_mask is None:
        count = torch.full((1, 1, 1, 1), float(size), dtype=like.dtype, device=like.device)
        return (-count.log()).view(1, 1, 1).expand(1, 1, size), count
    count = (~padding_mask).sum(-1).to(like.dtype)  # (B,)
    log_mass = (-count.log())[:, None].expand(-1, size).masked_fill(padding_mask, float("-inf"))  # (B, size)
    return log_mass[:, None, :], count.view(-1, 1, 1, 1)


def sinkhorn_plan(scores: Tensor, log_row_mass: Tensor, log_col_mass: Tensor, eps: float, half_steps: int,
                  first_update: Literal["rows", "columns"] = "rows") -> Tensor:
    """The entropic OT plan P between the two measures after `half_steps` Sinkhorn half-steps.

    scores:       (..., n, m) similarities S (the transport cost is −S).
    log_row_mass: (..., n) log μ, −inf for zero mass; broadcastable against scores[..., :, 0].
    log_col_mass: (..., m) log ν, likewise.
    first_update: "rows" (the convention) or "columns", which lets a caller store a plan transposed
                  (short side first: `log_softmax` over the long axis of an (n, r) tensor is slow).
    Returns P (..., n, m), exactly 0 on zero-mass rows and columns; the marginal of the last update
    (rows when `half_steps` is odd and `first_update` is "rows") is exact.
    """
    if half_steps < 1:
        raise ValueError(f"Sinkhorn needs at least one half-step, got {half_steps}")
    if first_update not in ("rows", "columns"):
        raise ValueError(f"first_update must be 'rows' or 'columns', got {first_update!r}")
    row_update = (-1, log_row_mass.clamp_min(ZERO_MASS_LOG).unsqueeze(-1))  # normalise rows to μ (..., n, 1)
    col_update = (-2, log_col_mass.clamp_min(ZERO_MASS_LOG).unsqueeze(-2))  # normalise columns to ν (..., 1, m)
    updates = (row_update, col_update) if first_update == "rows" else (col_update, row_update)
    logits = scores if eps == 1.0 else scores / eps  # (..., n, m)
    log_plan = logits + updates[1][1]  # (..., n, m): the other side's potential starts at its log-mass
    for step in range(half_steps - 1):
        dim, log_mass = updates[step % 2]
        log_plan = torch.log_softmax(log_plan, dim=dim) + log_mass
    dim, log_mass = updates[(half_steps - 1) % 2]
    return torch.softmax(log_plan, dim=dim) * log_mass.exp()  # the last half-step: no log / exp pair
