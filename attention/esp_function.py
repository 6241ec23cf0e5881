"""Fast path of ESP attention (ESPFormer, arXiv 2502.07962): a custom autograd Function over chunks of slices.

Per head, with A_l, B_l the SoftSorts of q[:, l] and k[:, l] (`attention/soft_sort.py`):

    out = Σ_l w_l A_lᵀ (B_l V),   w = softmax(−τ D),   D_l = ⟨C, A_lᵀ B_l⟩

The plans U_l = A_lᵀ B_l are never formed in the forward pass. With `sqeuclidean`,
D_l = Σ_r (A|q|²)_r + (B|k|²)_r − 2 (AQ)_r·(BK)_r, so every product is thin, O(n²d) per slice. With
`euclidean`, D_l = Σ_r (A C)_r·B_r is one (n × n)·(n × n) matmul per slice (no cheaper exact form is known).

Memory is O(chunk·n²): only T_l = A_lᵀ B_l V (L·n·d per head) and the weights are kept for backward,
which rebuilds the kernels chunk by chunk and differentiates them by hand (`SoftSortKernel.value_gradients`).
In backward the Euclidean cost's full-rank terms (B Cᵀ, A C, A_lᵀ B_l) are computed only for slices whose
∂L/∂D_l is not exactly zero: a slice whose weight underflowed contributes exactly nothing. Finding them is
the one host sync, and it is in backward. With `hard`, the forward uses the exact permutations (gathers),
the backward the soft Jacobian (straight-through).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .soft_sort import SoftSortKernel, negligible_log, valid_ranks

KERNEL_BUDGET = 1 << 24  # kernel entries per chunk and per side when slice_chunk is None (64 MB in float32)


@dataclass(frozen=True)
class EspSettings:
    sort_temperature: float
    inv_temperature: float
    cost: str
    hard: bool
    scale_by_n: bool
    slice_chunk: int | None


def slice_chunks(num_slices: int, batch_heads: int, n: int, slice_chunk: int | None) -> list[slice]:
    size = slice_chunk or max(1, KERNEL_BUDGET // (batch_heads * n * n))
    return [slice(start, min(start + size, num_slices)) for start in range(0, num_slices, size)]


def slice_weights(slice_costs: Tensor, inv_temperature: float, floor: float) -> Tensor:
    """softmax_l(−τ D) over the slices whose weight is at least e^floor; the others get exactly 0."""
    logits = -inv_temperature * slice_costs  # (B, H, L)
    kept = logits.softmax(-1) >= torch.exp(torch.tensor(floor, dtype=logits.dtype))
    return logits.masked_fill(~kept, -torch.inf).softmax(-1)


def gather_rows(x: Tensor, order: Tensor) -> Tensor:
    """x (B, H, n, p) by token -> (B, H, c, n, p) by rank: row r of slice l is x[order[l, r]]."""
    c = order.shape[2]
    return x[:, :, None].expand(-1, -1, c, -1, -1).gather(3, order[..., None].expand(-1, -1, -1, -1, x.shape[-1]))


def scatter_rows(x: Tensor, order: Tensor) -> Tensor:
    """Inverse of `gather_rows`: x (B, H, c, n, p) by rank -> (B, H, c, n, p) by token."""
    return torch.zeros_like(x).scatter(3, order[..., None].expand_as(x), x)


class EspFunction(torch.autograd.Function):
    """out (B, H, n, dv) from q, k (B, H, n, d) scaled by d^-1/2 with padded tokens zeroed, v (B, H, n, dv)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, valid_tokens: Tensor | None, settings: EspSettings):
        b, h, n, d = q.shape
        ranks = valid_ranks(valid_tokens, n)
        floor = negligible_log(q.dtype, n)
        euclidean = settings.cost == "euclidean"
        ones = q.new_ones(b, h, n, 1)
        if euclidean:
            rhs_q = torch.cat([torch.cdist(q, k), ones], dim=-1)  # (B, H, n, n + 1)
            rhs_k = torch.cat([v, ones], dim=-1)
        else:
            rhs_q = torch.cat([q, q.square().sum(-1, keepdim=True), ones], dim=-1)  # (B, H, n, d + 2)
            rhs_k = torch.cat([v, k, k.square().sum(-1, keepdim=True), ones], dim=-1)  # (B, H, n, dv + d + 2)
        slice_costs = q.new_empty(b, h, d)
        transported = q.new_empty(b, h, d, n, v.shape[-1])  # T_l = A_lᵀ B_l V, by token
        for chunk in slice_chunks(d, b * h, n, settings.slice_chunk):
            sort_q = SoftSortKernel(q[..., chunk].transpose(-1, -2), valid_tokens, ranks, settings.sort_temperature,
                                    floor, build=not settings.hard)
            sort_k = SoftSortKernel(k[..., chunk].transpose(-1, -2), valid_tokens, ranks, settings.sort_temperature,
                                    floor, build=not settings.hard)
            if settings.hard:
                cost, transported[:, :, chunk] = _hard_forward(q, k, v, sort_q, sort_k, euclidean)
            else:
                cost, transported[:, :, chunk] = _soft_forward(rhs_q, rhs_k, sort_q, sort_k, v.shape[-1], euclidean)
            slice_costs[..., chunk] = cost
        weights = slice_weights(slice_costs, settings.inv_temperature, floor)  # (B, H, L)
        out = torch.einsum("bhl,bhlnd->bhnd", weights, transported)
        if settings.scale_by_n:
            out = out * _token_counts(valid_tokens, b, n, out)
        ctx.settings = settings
        ctx.save_for_backward(q, k, v, valid_tokens, weights, transported)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, valid_tokens, weights, transported = ctx.saved_tensors
        settings: EspSettings = ctx.settings
        b, h, n, d = q.shape
        dv_dim = v.shape[-1]
        euclidean = settings.cost == "euclidean"
        ranks = valid_ranks(valid_tokens, n)
        floor = negligible_log(q.dtype, n)
        if settings.scale_by_n:
            grad_out = grad_out * _token_counts(valid_tokens, b, n, grad_out)
        grad_weights = torch.einsum("bhnd,bhlnd->bhl", grad_out, transported)
        grad_costs = -settings.inv_temperature * weights * (
            grad_weights - (weights * grad_weights).sum(-1, keepdim=True))  # ∂L/∂D_l, (B, H, L)
        right_q, right_k = grad_out, v  # Z of the upstream gradients P̄ = L Zᵀ of A and B
        if not euclidean:
            right_q = torch.cat([grad_out, q, q.square().sum(-1, keepdim=True)], dim=-1)
            right_k = torch.cat([v, k, k.square().sum(-1, keepdim=True)], dim=-1)
        distance = torch.cdist(q, k) if euclidean else None
        grad_distance = q.new_zeros(b, h, n, n) if euclidean and not settings.hard else None
        grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for chunk in slice_chunks(d, b * h, n, settings.slice_chunk):
            sort_q = SoftSortKernel(q[..., chunk].transpose(-1, -2), valid_tokens, ranks, settings.sort_temperature,
                                    floor)
            sort_k = SoftSortKernel(k[..., chunk].transpose(-1, -2), valid_tokens, ranks, settings.sort_temperature,
                                    floor)
            applied_q = sort_q.normalise(sort_q.jacobian_rhs(right_q))  # A [Z, s⊙Z, s]
            applied_k = sort_k.normalise(sort_k.jacobian_rhs(right_k))  # B [Z', s'⊙Z', s']
            if settings.hard:  # forward values from the permutations, Jacobian from the soft kernels
                a_right, b_right = gather_rows(right_q, sort_q.order), gather_rows(right_k, sort_k.order)
            else:
                a_right, b_right = applied_q[..., :right_q.shape[-1]], applied_k[..., :right_k.shape[-1]]
            w = weights[..., chunk, None, None]  # (B, H, c, 1, 1)
            g = grad_costs[..., chunk, None, None]
            left_q, left_k = w * b_right[..., :dv_dim], w * a_right[..., :dv_dim]  # L of P̄_A and P̄_B
            if not euclidean:
                ones = torch.ones_like(b_right[..., :1])
                left_q = torch.cat([left_q, -2.0 * g * b_right[..., dv_dim:dv_dim + d], g * ones], dim=-1)
                left_k = torch.cat([left_k, -2.0 * g * a_right[..., dv_dim:dv_dim + d], g * ones], dim=-1)
            if sort_q.rank_mask is not None:  # padded ranks carry nothing
                left_q, left_k = left_q * sort_q.rank_mask[..., None], left_k * sort_q.rank_mask[..., None]
            full_q = full_k = None
            if euclidean:
                full_q, full_k = _euclidean_full_rank(sort_q, sort_k, distance, grad_costs[..., chunk],
                                                      grad_distance, settings.hard)
            values_q, transposed_q = sort_q.value_gradients(left_q, right_q, applied_q, full_q)
            values_k, transposed_k = sort_k.value_gradients(left_k, right_k, applied_k, full_k)
            grad_q[..., chunk] += values_q.transpose(-1, -2)
            grad_k[..., chunk] += values_k.transpose(-1, -2)
            if settings.hard:  # direct terms through the permutations: Aᵀ L and Bᵀ L are scatters
                transposed_q, transposed_k = scatter_rows(left_q, sort_q.order), scatter_rows(left_k, sort_k.order)
            grad_v += transposed_k[..., :dv_dim].sum(2)  # Σ_l w_l B_lᵀ A_l Ō
            if not euclidean:  # D_l's explicit q, |q|², k, |k|² terms
                grad_q += transposed_q[..., dv_dim:dv_dim + d].sum(2) + 2.0 * q * transposed_q[..., -1:].sum(2)
                grad_k += transposed_k[..., dv_dim:dv_dim + d].sum(2) + 2.0 * k * transposed_k[..., -1:].sum(2)
            elif settings.hard:
                _hard_distance_backward(q, k, sort_q, sort_k, grad_costs[..., chunk], grad_q, grad_k)
        if grad_distance is not None:  # C_ij = ‖q_i − k_j‖: ∂C_ij/∂q_i = (q_i − k_j)/C_ij
            inverse = torch.where(distance > 0, grad_distance / distance, 0.0)  # (B, H, n, n)
            grad_q += q * inverse.sum(-1, keepdim=True) - inverse @ k
            grad_k += k * inverse.sum(-2)[..., None] - inverse.transpose(-1, -2) @ q
        return grad_q, grad_k, grad_v, None, None


def _token_counts(valid_tokens: Tensor | None, b: int, n: int, like: Tensor) -> Tensor:
    if valid_tokens is None:
        return like.new_full((b, 1, 1, 1), float(n))
    return valid_tokens.sum(-1).to(like.dtype)[:, None, None, None]


def _soft_forward(rhs_q: Tensor, rhs_k: Tensor, sort_q: SoftSortKernel, sort_k: SoftSortKernel, dv: int,
                  euclidean: bool) -> tuple[Tensor, Tensor]:
    """Slice costs (B, H, c) and T_l = A_lᵀ B_l V (B, H, c, n, dv) with soft sorts."""
    applied_k = sort_k.normalise(rhs_k)  # B [V, (K, |k|²)]
    if euclidean:
        applied_q = sort_q.normalise(rhs_q, scaled=False)  # E_A C, (B, H, c, n, n), rows not normalised
        per_rank = applied_q.mul_(sort_k.kernel).sum(-1) * sort_q.inv_norm * sort_k.inv_norm  # (A C)_r·B_r
        cost = per_rank.sum(-1)
    else:
        applied_q = sort_q.normalise(rhs_q)  # A [Q, |q|²]
        d = rhs_q.shape[-1] - 2
        cross = (applied_q[..., :d] * applied_k[..., dv:dv + d]).sum(-1)  # (AQ)_r·(BK)_r
        cost = (applied_q[..., d] + applied_k[..., dv + d] - 2.0 * cross).sum(-1)
    return cost, sort_q.apply_t(applied_k[..., :dv])


def _hard_forward(q: Tensor, k: Tensor, v: Tensor, sort_q: SoftSortKernel, sort_k: SoftSortKernel,
                  euclidean: bool) -> tuple[Tensor, Tensor]:
    """The same with exact permutations: rank r matches token order_q[r] to token order_k[r]."""
    squared = (gather_rows(q, sort_q.order) - gather_rows(k, sort_k.order)).square().sum(-1)  # (B, H, c, n)
    per_rank = squared.sqrt() if euclidean else squared
    matched_v = gather_rows(v, sort_k.order)  # (B, H, c, n, dv)  B_l V
    if sort_q.rank_mask is not None:  # padded ranks match padded tokens: they carry nothing
        per_rank, matched_v = per_rank * sort_q.rank_mask, matched_v * sort_q.rank_mask[..., None]
    return per_rank.sum(-1), scatter_rows(matched_v, sort_q.order)


def _hard_distance_backward(q: Tensor, k: Tensor, sort_q: SoftSortKernel, sort_k: SoftSortKernel,
                            grad_costs: Tensor, grad_q: Tensor, grad_k: Tensor) -> None:
    """∂/∂q, ∂/∂k of Σ_l ∂L/∂D_l Σ_r ‖q_σ(r) − k_π(r)‖ through the distances, in place."""
    diff = gather_rows(q, sort_q.order) - gather_rows(k, sort_k.order)  # (B, H, c, n, d)
    norm = diff.square().sum(-1, keepdim=True).sqrt()
    coef = torch.where(norm > 0, grad_costs[..., None, None] / norm, 0.0)
    if sort_q.rank_mask is not None:
        coef = coef * sort_q.rank_mask[..., None]
    grad_q += scatter_rows(coef * diff, sort_q.order).sum(2)
    grad_k -= scatter_rows(coef * diff, sort_k.order).sum(2)


def _euclidean_full_rank(sort_q: SoftSortKernel, sort_k: SoftSortKernel, distance: Tensor, grad_costs: Tensor,
                         grad_distance: Tensor | None, hard: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The full-rank upstream gradients ∂L/∂A_l = ḡ_l B_l Cᵀ and ∂L/∂B_l = ḡ_l A_l C, reduced to n-vectors.

    Only for slices with ḡ_l = ∂L/∂D_l ≠ 0; also adds ḡ_l A_lᵀ B_l into grad_distance (soft sorts).
    """
    b, h, c, n = sort_q.values.shape
    flat_grad = grad_costs.reshape(-1)  # (B·H·c,)
    active = flat_grad.nonzero().squeeze(-1)  # host sync, in backward only
    full_q = {key: sort_q.values.new_zeros(b * h * c, n) for key in ("rho", "by_values", "t_ranked", "t_ones")}
    full_k = {key: sort_q.values.new_zeros(b * h * c, n) for key in ("rho", "by_values", "t_ranked", "t_ones")}
    if active.numel():
        head = active // c  # (m,) index into B·H
        dist = distance.reshape(b * h, n, n)[head]  # (m, n, n)
        scale = flat_grad[active][:, None, None]
        p_q = (sort_q.kernel.reshape(-1, n, n)[active] * sort_q.inv_norm.reshape(-1, n)[active, :, None])
        p_k = (sort_k.kernel.reshape(-1, n, n)[active] * sort_k.inv_norm.reshape(-1, n)[active, :, None])
        if hard:  # B_l Cᵀ and A_l C with the permutations: rows of Cᵀ and C
            order_q, order_k = sort_q.order.reshape(-1, n)[active], sort_k.order.reshape(-1, n)[active]
            upstream_q = dist.transpose(-1, -2).gather(1, order_k[..., None].expand(-1, -1, n))
            upstream_k = dist.gather(1, order_q[..., None].expand(-1, -1, n))
        else:
            upstream_q = torch.bmm(p_k, dist.transpose(-1, -2))  # F = B Cᵀ   (m, n, n)
            upstream_k = torch.bmm(p_q, dist)  # E = A C
            grad_distance.view(b * h, n, n).index_add_(0, head, torch.bmm(p_q.transpose(-1, -2), p_k) * scale)
        _reduce_full_rank(full_q, active, p_q.mul_(upstream_q).mul_(scale), sort_q, n)
        _reduce_full_rank(full_k, active, p_k.mul_(upstream_k).mul_(scale), sort_k, n)
    return ({key: t.view(b, h, c, n) for key, t in full_q.items()},
            {key: t.view(b, h, c, n) for key, t in full_k.items()})


def _reduce_full_rank(out: dict[str, Tensor], active: Tensor, weighted: Tensor, sort: SoftSortKernel, n: int) -> None:
    """rowsum, (P⊙F) s, (P⊙F)ᵀ a, (P⊙F)ᵀ 1 of weighted = P⊙F (m, n, n) into the active rows of `out`."""
    values, ranked = sort.values.reshape(-1, n)[active], sort.ranked.reshape(-1, n)[active]
    ones = torch.ones_like(values)
    by_rank = torch.bmm(weighted, torch.stack([ones, values], dim=-1))  # (m, n, 2)
    by_token = torch.bmm(weighted.transpose(-1, -2), torch.stack([ranked, ones], dim=-1))
    out["rho"][active], out["by_values"][active] = by_rank[..., 0], by_rank[..., 1]
    out["t_ranked"][active], out["t_ones"][active] = by_token[..., 0], by_token[..., 1]
