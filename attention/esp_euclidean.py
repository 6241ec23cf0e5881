"""The Euclidean slice cost of ESP attention (ESPFormer, arXiv 2502.07962): D_l = ⟨C, A_lᵀ B_l⟩.

C_ij = ‖q_i − k_j‖ is not low-rank, so D_l and its gradient cost (n × n)·(n × n) matmuls per slice:
D_l = Σ_r (A C)_r · B_r in forward; in backward ∂L/∂A_l = ḡ_l B_l Cᵀ and ∂L/∂C = Σ_l ḡ_l A_lᵀ B_l
(ḡ_l = ∂L/∂D_l), while ∂L/∂B_l = ḡ_l A_l C enters B's soft-sort backward only through four n-vectors of
B ⊙ (A C) (`reduce_full_rank`), reduced in forward from the product it already has. That is three such
matmuls per slice, the count of differentiating the dense formulation; each stacks a chunk's slices
(a head's C is shared by its slices) into one large matmul.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .soft_sort import SoftSortKernel


def pair_distances(q: Tensor, k: Tensor, valid_tokens: Tensor | None) -> Tensor:
    """C = ‖q_i − k_j‖ (B, H, n, n), zero on every pair with a padded token."""
    distance = torch.cdist(q, k)
    if valid_tokens is None:
        return distance
    valid = valid_tokens[:, None, :, None] & valid_tokens[:, None, None, :]  # (B, 1, n, n)
    return distance.masked_fill_(~valid, 0.0)


def reduce_full_rank(weighted: Tensor, row_scale: Tensor, values: Tensor, ranked: Tensor) -> Tensor:
    """The four n-vectors of M = diag(row_scale) · weighted that `SoftSortKernel.backward` takes as full_rank.

    weighted (..., n, n) = P ⊙ F up to row scale; values s, ranked a (..., n). Returns (4, ..., n):
    rowsum(M), M s, Mᵀ a, Mᵀ 1. The products are (2, n) row blocks times (n, n), the fast orientation.
    """
    n = weighted.shape[-1]
    flat = weighted.reshape(-1, n, n)
    by_rank = torch.bmm(torch.stack([torch.ones_like(values), values], dim=-2).reshape(-1, 2, n),
                        flat.transpose(1, 2)).view(values.shape[:-1] + (2, n))  # [M 1; M s] before scale
    by_token = torch.bmm(torch.stack([row_scale * ranked, row_scale], dim=-2).reshape(-1, 2, n), flat
                         ).view(values.shape[:-1] + (2, n))  # [Mᵀ a; Mᵀ 1]
    return torch.stack([by_rank[..., 0, :] * row_scale, by_rank[..., 1, :] * row_scale,
                        by_token[..., 0, :], by_token[..., 1, :]])


def euclidean_costs(rhs_q: Tensor, sort_q: SoftSortKernel, sort_k: SoftSortKernel, key_terms: Tensor | None
                    ) -> Tensor:
    """D_l = Σ_r (A C)_r · B_r (B, H, c), in float64, for rhs_q = [C, valid column] (B, H, n, n + 1).

    Sets sort_q.inv_norm. With key_terms (4, B, H, c, n), also writes the reductions of B ⊙ (A C) = B ⊙ ∂D/∂B
    that backward needs (to be multiplied by ḡ_l there). sort_k.inv_norm must be set.
    """
    weighted = sort_q.normalise(rhs_q, scaled=False).mul_(sort_k.kernel)  # (E_A C) ⊙ E_B, (B, H, c, n, n)
    both = sort_q.inv_norm * sort_k.inv_norm  # its row scale α β, (B, H, c, n)
    if key_terms is None:
        return (weighted.sum(-1) * both).sum(-1, dtype=torch.float64)
    key_terms.copy_(reduce_full_rank(weighted, both, sort_k.values, sort_k.ranked))
    return key_terms[0].sum(-1, dtype=torch.float64)


def query_upstream(sort_q: SoftSortKernel, sort_k: SoftSortKernel, distance: Tensor, grad_costs: Tensor,
                   left: Tensor, right: Tensor, grad_distance: Tensor, out: Tensor, lift: float) -> Tensor:
    """lift · P̄_A = lift · (ḡ_l B_l Cᵀ + L Zᵀ) (B, H, c, n, n), written into the flat buffer `out`, and
    lift · Σ_l ḡ_l A_lᵀ B_l added into grad_distance (B, H, n, n).

    Kernels normalised (P); grad_costs ḡ (B, H, c); left L (B, H, c, n, p) by rank, right Z (B, H, n, p) by
    token. Scales sort_k's kernel in place (B_l -> lift ḡ_l B_l): call it after everything else that uses it.
    """
    b, h, c, n = sort_q.values.shape
    scaled_k = sort_k.kernel.mul_((grad_costs * lift)[..., None, None]).view(b * h, c * n, n)
    # Σ_l ḡ_l A_lᵀ B_l: one matmul over the slices stacked by rows
    grad_distance.view(b * h, n, n).baddbmm_(sort_q.kernel.view(b * h, c * n, n).transpose(1, 2), scaled_k)
    upstream = torch.bmm(scaled_k, distance.view(b * h, n, n).transpose(1, 2), out=out[:b * h * c * n * n]
                         .view(b * h, c * n, n))  # lift ḡ_l B_l Cᵀ, the slices stacked by rows
    upstream.baddbmm_(left.reshape(b * h, c * n, -1) * lift, right.reshape(b * h, n, -1).transpose(1, 2))
    return upstream.view(b, h, c, n, n)


def hard_cost_upstream(order: Tensor, distance: Tensor, grad_costs: Tensor) -> Tensor:
    """ḡ_l C[order[r], :] (B, H, c, n, n): ∂D_l/∂B_l = A_l C with A_l the exact permutation `order` of the
    queries (pass distance = C), or ∂D_l/∂A_l = B_l Cᵀ (pass order of the keys and Cᵀ)."""
    b, h, c, n = order.shape
    rows = distance[:, :, None].expand(b, h, c, n, n).gather(3, order[..., None].expand(b, h, c, n, n))
    return rows.mul_(grad_costs[..., None, None])


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
