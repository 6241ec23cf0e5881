"""ESP attention: expected sliced transport plans (ESPFormer, ICML 2025, arXiv 2502.07962).

Per head, the slices are the d coordinate axes of the queries and keys, both scaled by d^-1/2 (as the
reference code does): the number of slices is the head dimension, `model.head_dim` (default dim / heads;
the official ViT uses 64 per head whatever the width), and the slices are learned through W_q and W_k.
Slice l soft-sorts the queries' and the keys' l-th coordinates (SoftSort with squared distance,
temperature `sort_temperature`) and matches them rank to rank:
U_l = A_lᵀ B_l, total mass n, rows and columns summing to ≈ 1. Slice l costs D_l = ⟨C, U_l⟩ with
C_ij = ‖q_i − k_j‖ (`euclidean`, the reference code's choice) or its square (`sqeuclidean`), and
attention is the Gibbs mixture G = Σ_l softmax(−τ D)_l U_l with τ = `inv_temperature`
(τ = 0: the plain expected sliced plan; τ → ∞: the cheapest slice). `hard` uses the exact sorting
permutations in the forward pass and the soft ones' gradient (straight-through). The official code's
hard mode instead takes the top-1 (argmax) of each soft-sort row: the same permutation for distinct
values, but tied values all pick one element (a row-duplicated matrix, not a permutation); ours stays a
permutation. `scale_by_n` multiplies G by the number of valid tokens, as the point-cloud code (τ = 0.1)
still does.

Padding: only valid tokens enter the sorts and the costs; no mass crosses between valid and padded
tokens (no sentinel values). Cross-attention with m ≠ n is not defined by the paper and is refused;
there is no causal form (a lower-triangular doubly-stochastic matrix is the identity).

`forward` runs `EspFunction` (O(slice_chunk·n²) memory, hand-written backward); `attention_matrix` is
the plain dense form beside it, differentiable by autograd, for tests and plots; `slice_weights` shows
which coordinate axes each head uses.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import Tensor

from lab.registry import Above, AtLeast

from .base import AttentionCore
from .esp_function import EspFunction, EspSettings, slice_weights
from .registry import register_attention
from .soft_sort import SoftSortKernel, negligible_log, sort_slices, valid_column, valid_ranks


@register_attention("esp")
class EspAttention(AttentionCore):
    supports_causal = False
    supports_cross = False
    doubly_stochastic = True
    complexity = "quadratic"

    def __init__(self, num_heads: int, head_dim: int, *, sort_temperature: Annotated[float, Above(0)] = 1e-3,
                 inv_temperature: Annotated[float, AtLeast(0)] = 10.0,
                 cost: Literal["euclidean", "sqeuclidean"] = "euclidean", hard: bool = False,
                 scale_by_n: bool = False, slice_chunk: Annotated[int, AtLeast(1)] | None = None):
        super().__init__(num_heads, head_dim)
        self.settings = EspSettings(sort_temperature, inv_temperature, cost, hard, scale_by_n, slice_chunk)

    def _prepare(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Scale by d^-1/2 and zero the padded tokens, so that they can never overflow anything."""
        scale = q.shape[-1] ** -0.5
        q, k = q * scale, k * scale
        if key_padding_mask is None:
            return q, k, None
        padded = key_padding_mask[:, None, :, None]  # (B, 1, N, 1)
        return q.masked_fill(padded, 0.0), k.masked_fill(padded, 0.0), ~key_padding_mask

    def _attend(self, q, k, v, key_padding_mask, query_padding_mask, causal) -> Tensor:
        q, k, valid = self._prepare(q, k, key_padding_mask)
        if valid is not None:
            v = v.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        return EspFunction.apply(q, k, v, valid, self.settings)

    def _attention_matrix(self, q, k, key_padding_mask, query_padding_mask, causal) -> Tensor:
        q, k, valid = self._prepare(q, k, key_padding_mask)
        plans, weights = dense_slice_plans(q, k, valid, self.settings)
        plan = torch.einsum("bhl,bhlij->bhij", weights, plans)
        if self.settings.scale_by_n:
            counts = float(q.shape[2]) if valid is None else valid.sum(-1).to(plan.dtype)[:, None, None, None]
            plan = plan * counts
        return plan

    @torch.no_grad()
    def slice_weights(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """The Gibbs weights softmax(−τ D) over the slices (B, H, d): which coordinate axes a head uses."""
        if q.shape[2] != k.shape[2]:
            raise ValueError("attention 'esp' does not support cross-attention (Nq != Nk)")
        q, k, valid = self._prepare(q.double(), k.double(), key_padding_mask)
        return dense_slice_plans(q, k, valid, self.settings)[1].to(q.dtype)

    def extra_repr(self) -> str:
        s = self.settings
        return (f"num_heads={self.num_heads}, head_dim={self.head_dim}, sort_temperature={s.sort_temperature}, "
                f"inv_temperature={s.inv_temperature}, cost={s.cost}, hard={s.hard}, scale_by_n={s.scale_by_n}")


def dense_slice_plans(q: Tensor, k: Tensor, valid: Tensor | None, settings: EspSettings) -> tuple[Tensor, Tensor]:
    """Every slice plan U_l (B, H, d, N, N) materialised, and the slice weights (B, H, d).

    q, k (B, H, N, d) scaled, padded tokens zeroed; valid (B, N) True = real token, or None.
    """
    b, h, n, d = q.shape
    ranks = valid_ranks(valid, n)
    floor = negligible_log(q.dtype, n)
    plans = []
    for values in (q, k):
        slice_values = values.transpose(-1, -2)  # (B, H, d, N)
        sort = SoftSortKernel(slice_values, *sort_slices(slice_values, valid, ranks), valid, ranks,
                              settings.sort_temperature, floor)
        sort.normalise(valid_column(valid, q[..., 0]).expand(b, h, n, 1))  # sets the row normalisers
        soft = sort.normalised()  # (B, H, d, N, N)  P[r, i]
        if settings.hard:  # straight-through: exact permutation forward, soft gradient backward
            exact = torch.zeros_like(soft).scatter(-1, sort.order[..., None], 1.0)
            if ranks is not None:
                exact = exact * ranks[:, None, None, :, None]
            soft = exact + soft - soft.detach()
        plans.append(soft)
    plans = plans[0].transpose(-1, -2) @ plans[1]  # (B, H, d, N, N)  U_l = A_lᵀ B_l
    distance = torch.cdist(q, k)
    cost = distance if settings.cost == "euclidean" else distance.square()
    slice_costs = (plans * cost[:, :, None]).sum(dim=(-1, -2), dtype=torch.float64)  # (B, H, d), see slice_weights
    return plans, slice_weights(slice_costs, settings.inv_temperature, floor).to(q.dtype)
