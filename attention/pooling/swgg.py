"""Lifted slice costs of sets against reference points (SWGG: Mahey et al., NeurIPS 2023), for swe / cswe.

Per set X (n_b valid elements), references R (M) and slice l, the 1-D sorted matching of the projections,
lifted to the input space, is Γ_l = P_xᵀ Q P_r (Q: the quantile coupling of Unif(n_b) and Unif(M); P_x, P_r:
the sorting permutations, exact or soft) and costs D_l = sqrt(<‖x_i − r_j‖², Γ_l>) >= W2(X, R).
The independent pairing Γ = (1/n_b)(1/M) 11ᵀ ignores the slices altogether: when every D_l sits near its
cost, the slice directions barely shape the matching.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .sliced import RELAXATIONS, SlicedSets


def squared_distances(x: Tensor, references: Tensor) -> Tensor:
    """(B, N, M) ‖x_i − r_j‖² (an n × M matrix, never n × n)."""
    cross = x @ references.T  # (B, N, M)
    return (x.square().sum(-1, keepdim=True) + references.square().sum(-1) - 2 * cross).clamp_min(0)


def hard_swgg(costs: Tensor, sliced: SlicedSets, coupling: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """(B, L) squared lifted cost <C, Γ_l> with exact sorts: a sum over the <= n_b + M − 1 coupling cells."""
    rows, cols, mass = coupling  # (B, K): rank in the set, rank in the references, mass
    num_refs, num_slices = sliced.ref_order.shape
    elements = sliced.set_order.gather(1, rows.unsqueeze(-1).expand(-1, -1, num_slices))  # (B, K, L)
    refs = sliced.ref_order[cols]  # (B, K, L)
    cell_costs = costs.flatten(1).gather(1, (elements * num_refs + refs).flatten(1)).view_as(elements)
    return (mass.unsqueeze(-1) * cell_costs).sum(1)  # (B, L)


def soft_swgg(x: Tensor, references: Tensor, sliced: SlicedSets, coupling: Tensor, padding_mask: Tensor | None,
              relaxation: str, temperature: float) -> Tensor:
    """(B, L) squared lifted cost <C, P̃_xᵀ Q P̃_r> with soft permutations, without an n × n × M tensor.

    With C = ‖x_i‖² + ‖r_j‖² − 2 x_i·r_j, the augmented points x̃ = [x, ‖x‖²], r̃ = [r, ‖r‖²], the soft-sorted
    set S = P̃_x X̃ and the references matched to its ranks T = Q P̃_r R̃ (both (N, C+1) per slice):
        <C, Γ> = Σ_k (Q1)_k S[k, C] + Σ_k T[k, C] − 2 Σ_k S[k, :C]·T[k, :C].
    x: (B, N, C) (padded rows zero), references (M, C), coupling Q: (B, N, M) dense.
    """
    soft_permutation_product = RELAXATIONS[relaxation]
    augmented_set = torch.cat([x, x.square().sum(-1, keepdim=True)], dim=-1)  # (B, N, C+1)
    augmented_refs = torch.cat([references, references.square().sum(-1, keepdim=True)], dim=-1)  # (M, C+1)
    mask = None if padding_mask is None else padding_mask.unsqueeze(1)  # (B, 1, N)
    sorted_set = soft_permutation_product(sliced.set_sorted.transpose(1, 2), sliced.set_projections.transpose(1, 2),
                                          mask, temperature, augmented_set.unsqueeze(1))  # (B, L, N, C+1)
    sorted_refs = soft_permutation_product(sliced.ref_sorted.T.unsqueeze(0), sliced.ref_projections.T.unsqueeze(0),
                                           None, temperature, augmented_refs)[0]  # (L, M, C+1)
    matched_refs = torch.einsum("bnm,lmc->blnc", coupling, sorted_refs)  # (B, L, N, C+1)
    squared_norms = (coupling.sum(-1).unsqueeze(1) * sorted_set[..., -1]).sum(-1) + matched_refs[..., -1].sum(-1)
    cross = (sorted_set[..., :-1] * matched_refs[..., :-1]).sum((-2, -1))  # (B, L)
    return squared_norms - 2 * cross


def independent_pairing_cost(x: Tensor, references: Tensor, counts: Tensor) -> Tensor:
    """(B,) sqrt(<‖x_i − r_j‖², (1/n_b)(1/M) 11ᵀ>) = sqrt(mean‖x‖² + mean‖r‖² − 2 x̄·r̄); padded rows of x zero."""
    valid = counts.to(x.dtype)[:, None]  # (B, 1)
    set_mean = x.sum(1) / valid  # (B, C)
    set_square = x.square().sum((1, 2)) / valid[:, 0]  # (B,)
    squared = set_square + references.square().sum(-1).mean() - 2 * set_mean @ references.mean(0)
    return squared.clamp_min(0).sqrt()
