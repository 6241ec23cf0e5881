"""The Euclidean slice cost of ESP attention (ESPFormer, arXiv 2502.07962): D_l = ⟨C, A_lᵀ B_l⟩.

C_ij = ‖q_i − k_j‖ is not low-rank, so D_l and its gradient cost (n × n)·(n × n) matmuls per slice:
D_l = Σ_r (A C)_r · B_r in forward; in backward ∂L/∂A_l = ḡ_l B_l Cᵀ and ∂L/∂C = Σ_l ḡ_l A_lᵀ B_l
(ḡ_l = ∂L/∂D_l), while ∂L/∂B_l = ḡ_l A_l C is reduced in forward from the product it already has. That is
three such matmuls per slice, the count of differentiating the dense formulation; everything else is thin.

The full-rank upstream gradients only enter the SoftSort backward through four n-vectors of
M = P ⊙ F (`reduce_full_rank`), so no (n, n) gradient is ever kept.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .soft_sort import SoftSortKernel

FULL_RANK_KEYS = ("rho", "by_values", "t_ranked", "t_ones")


def pair_distances(q: Tensor, k: Tensor, valid_tokens: Tensor | None) -> Tensor:
    """C = ‖q_i − k_j‖ (B, H, n, n), zero on every pair with a padded token."""
    distance = torch.cdist(q, k)
    if valid_tokens is None:
        return distance
    valid = valid_tokens[:, None, :, None] & valid_tokens[:, None, None, :]  # (B, 1, n, n)
    return distance.masked_fill_(~valid, 0.0)


def reduce_full_rank(weighted: Tensor, row_scale: Tensor | None, values: Tensor, ranked: Tensor) -> Tensor:
    """The four n-vectors of M = diag(row_scale) · weighted that `SoftSortKernel.value_gradients` needs.

    weighted (..., n, n) = P ⊙ F up to row scale; values s, ranked a (..., n). Returns (4, ..., n):
    rowsum(M), M s, Mᵀ a, Mᵀ 1. The products are (2, n) row blocks times (n, n), the fast orientation.
    """
    n = weighted.shape[-1]
    scale = torch.ones_like(values) if row_scale is None else row_scale
    flat = weighted.reshape(-1, n, n)
    by_rank = torch.bmm(torch.stack([torch.ones_like(values), values], dim=-2).reshape(-1, 2, n),
                        flat.transpose(1, 2)).view(values.shape[:-1] + (2, n))  # [M 1; M s] before scale
    by_token = torch.bmm(torch.stack([scale * ranked, scale], dim=-2).reshape(-1, 2, n), flat
                         ).view(values.shape[:-1] + (2, n))  # [Mᵀ(scale ⊙ a); Mᵀ scale]
    return torch.stack([by_rank[..., 0, :] * scale, by_rank[..., 1, :] * scale,
                        by_token[..., 0, :], by_token[..., 1, :]])


def euclidean_costs(rhs_q: Tensor, sort_q: SoftSortKernel, sort_k: SoftSortKernel, key_terms: Tensor | None
                    ) -> Tensor:
    """D_l = Σ_r (A C)_r · B_r (B, H, c), in float64, for rhs_q = [C, valid column] (B, H, n, n + 1).

    Sets sort_q.inv_norm. With key_terms (4, B, H, c, n), also writes the reductions of B ⊙ (A C) = ∂D/∂B ⊙ B
    that backward needs (to be multiplied by ḡ_l there). sort_k.inv_norm must be set.
    """
    weighted = sort_q.normalise(rhs_q, scaled=False).mul_(sort_k.kernel)  # (E_A C) ⊙ E_B, (B, H, c, n, n)
    both = sort_q.inv_norm * sort_k.inv_norm  # its row scale α β, (B, H, c, n)
    if key_terms is None:
        return (weighted.sum(-1) * both).sum(-1, dtype=torch.float64)
    key_terms.copy_(reduce_full_rank(weighted, both, sort_k.values, sort_k.ranked))
    return key_terms[0].sum(-1, dtype=torch.float64)


def query_full_rank(sort_q: SoftSortKernel, sort_k: SoftSortKernel, distance: Tensor, grad_costs: Tensor,
                    grad_distance: Tensor, scratch: Tensor, lift: float) -> dict[str, Tensor] | None:
    """∂L/∂A_l = ḡ_l B_l Cᵀ reduced to n-vectors; lift · Σ_l ḡ_l A_lᵀ B_l added into grad_distance.

    grad_costs ḡ (B, H, c). A chunk whose ḡ_l are all exactly zero (weights that underflowed) contributes
    exactly nothing and is skipped; that test is a host sync, in backward only.
    """
    if not grad_costs.any():
        return None
    b, h, c, n = sort_q.values.shape
    scratch = scratch[:b * h * c * n * n]
    both = sort_q.inv_norm * sort_k.inv_norm  # (B, H, c, n)  α β
    # Σ_l ḡ_l A_lᵀ B_l = Σ_l E_A,lᵀ diag(ḡ_l α_l β_l) E_B,l: one matmul over the slices stacked by rows
    scaled_k = torch.mul(sort_k.kernel, (both * (grad_costs[..., None] * lift))[..., None],
                         out=scratch.view(b, h, c, n, n))
    grad_distance.view(b * h, n, n).baddbmm_(sort_q.kernel.view(b * h, c * n, n).transpose(1, 2),
                                             scaled_k.view(b * h, c * n, n))
    # A ⊙ (B Cᵀ) = diag(α β) (E_A ⊙ E_B Cᵀ)
    weighted = torch.bmm(sort_k.kernel.view(b * h, c * n, n), distance.view(b * h, n, n).transpose(1, 2),
                         out=scratch.view(b * h, c * n, n)).view(b, h, c, n, n).mul_(sort_q.kernel)
    terms = reduce_full_rank(weighted, both, sort_q.values, sort_q.ranked) * grad_costs[..., None]
    return dict(zip(FULL_RANK_KEYS, terms))


def key_full_rank(key_terms: Tensor, grad_costs: Tensor) -> dict[str, Tensor]:
    """∂L/∂B_l = ḡ_l A_l C reduced to n-vectors, from the forward's key_terms (4, B, H, c, n)."""
    return dict(zip(FULL_RANK_KEYS, key_terms * grad_costs[..., None]))


def hard_full_rank(sort_q: SoftSortKernel, sort_k: SoftSortKernel, distance: Tensor, grad_costs: Tensor
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor]] | tuple[None, None]:
    """Straight-through: ḡ_l B_l Cᵀ and ḡ_l A_l C with the exact permutations (rows of Cᵀ and of C),
    reduced against the soft kernels. Skipped, like `query_full_rank`, when every ḡ_l is zero."""
    if not grad_costs.any():
        return None, None
    b, h, c, n = sort_q.values.shape
    dist = distance[:, :, None].expand(b, h, c, n, n)
    upstream_q = dist.transpose(-1, -2).gather(3, sort_k.order[..., None].expand(b, h, c, n, n))  # C[:, π(r)]ᵀ
    upstream_k = dist.gather(3, sort_q.order[..., None].expand(b, h, c, n, n))  # C[σ(r), :]
    terms = []
    for sort, upstream in ((sort_q, upstream_q), (sort_k, upstream_k)):
        weighted = upstream.mul_(sort.kernel)  # E ⊙ upstream; rows scaled by inv_norm below
        reduced = reduce_full_rank(weighted, sort.inv_norm, sort.values, sort.ranked) * grad_costs[..., None]
        terms.append(dict(zip(FULL_RANK_KEYS, reduced)))
    return terms[0], terms[1]


def hard_distance_backward(q: Tensor, k: Tensor, sort_q: SoftSortKernel, sort_k: SoftSortKernel,
                           grad_costs: Tensor, grad_q: Tensor, grad_k: Tensor) -> None:
    """∂/∂q, ∂/∂k of Σ_l ḡ_l Σ_r ‖q_σ(r) − k_π(r)‖ through the distances (hard sorts), in place."""
    diff = sort_q.by_rank(q) - sort_k.by_rank(k)  # (B, H, c, n, d)
    norm = diff.square().sum(-1, keepdim=True).sqrt()
    coef = torch.where(norm > 0, grad_costs[..., None, None] / norm, 0.0)
    if sort_q.rank_mask is not None:
        coef = coef * sort_q.rank_mask[..., None]
    grad_q += sort_q.by_token(coef * diff).sum(2)
    grad_k -= sort_k.by_token(coef * diff).sum(2)
