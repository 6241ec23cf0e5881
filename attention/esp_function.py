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

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .soft_sort import SoftSortKernel, negligible_log, valid_column, valid_ranks

KERNEL_BUDGET = 1 << 22  # kernel entries per chunk and per side when slice_chunk is None (16 MB in float32)


@dataclass(frozen=True)
class EspSettings:
    sort_temperature: float
    inv_temperature: float
    cost: str
    hard: bool
    scale_by_n: bool
    slice_chunk: int | None


def slice_weights(slice_costs: Tensor, inv_temperature: float, floor: float) -> Tensor:
    """softmax_l(−τ D) over the slices whose weight is at least e^floor; the others get exactly 0."""
    logits = -inv_temperature * slice_costs  # (B, H, L)
    kept = logits.softmax(-1) >= torch.exp(torch.tensor(floor, dtype=logits.dtype))
    return logits.masked_fill(~kept, -torch.inf).softmax(-1)


def pair_distances(q: Tensor, k: Tensor, valid_tokens: Tensor | None) -> Tensor:
    """C = ‖q_i − k_j‖ (B, H, n, n), zero on every pair with a padded token."""
    distance = torch.cdist(q, k)
    if valid_tokens is None:
        return distance
    valid = valid_tokens[:, None, :, None] & valid_tokens[:, None, None, :]  # (B, 1, n, n)
    return distance.masked_fill_(~valid, 0.0)


class EspFunction(torch.autograd.Function):
    """out (B, H, n, dv) from q, k (B, H, n, d) scaled by d^-1/2, v (B, H, n, dv), padded tokens zeroed."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, valid_tokens: Tensor | None, settings: EspSettings):
        b, h, n, d = q.shape
        context = _Context(q, valid_tokens, settings)
        ones = context.ones.expand(b, h, n, 1)
        if context.euclidean:
            rhs_q = torch.cat([pair_distances(q, k, valid_tokens), ones], dim=-1)  # (B, H, n, n + 1)
            rhs_k = torch.cat([v, ones], dim=-1)
        else:
            rhs_q = torch.cat([q, q.square().sum(-1, keepdim=True), ones], dim=-1)  # (B, H, n, d + 2)
            rhs_k = torch.cat([v, k, k.square().sum(-1, keepdim=True), ones], dim=-1)  # (B, H, n, dv + d + 2)
        slice_costs = q.new_empty(b, h, d)
        transported = q.new_empty(b, h, d, n, v.shape[-1])  # T_l = A_lᵀ B_l V, by token
        # ∂D_l/∂B_l = A_l C reduced to four n-vectors per slice (see `_reduce_full_rank`), kept for backward
        needs_grad = any(ctx.needs_input_grad[:2])
        key_terms = q.new_empty(4, b, h, d, n) if context.euclidean and not settings.hard and needs_grad else None
        for chunk, sort_q, sort_k in context.chunks(q, k, build=not settings.hard):
            if settings.hard:
                cost, transported[:, :, chunk] = _hard_forward(q, k, v, sort_q, sort_k, context.euclidean)
            elif context.euclidean:
                cost, transported[:, :, chunk] = _euclidean_forward(
                    rhs_q, rhs_k, sort_q, sort_k, None if key_terms is None else key_terms[:, :, :, chunk])
            else:
                cost, transported[:, :, chunk] = _sqeuclidean_forward(rhs_q, rhs_k, sort_q, sort_k, v.shape[-1])
            slice_costs[..., chunk] = cost
        weights = slice_weights(slice_costs, settings.inv_temperature, context.floor)  # (B, H, L)
        out = torch.einsum("bhl,bhlnd->bhnd", weights, transported)
        if settings.scale_by_n:
            out = out * _token_counts(valid_tokens, b, n, out)
        ctx.settings = settings
        ctx.save_for_backward(q, k, v, valid_tokens, weights, transported, key_terms)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, valid_tokens, weights, transported, key_terms = ctx.saved_tensors
        settings: EspSettings = ctx.settings
        b, h, n, d = q.shape
        dv = v.shape[-1]
        context = _Context(q, valid_tokens, settings)
        if settings.scale_by_n:
            grad_out = grad_out * _token_counts(valid_tokens, b, n, grad_out)
        # Backward is linear in grad_out: run it on grad_out / its largest entry and scale the result back, so
        # the loss scale cannot push products of kernel entries into denormal numbers (~100× slower matmuls)
        grad_scale = grad_out.abs().amax().clamp(min=torch.finfo(q.dtype).tiny)
        grad_out = grad_out / grad_scale
        grad_weights = torch.einsum("bhnd,bhlnd->bhl", grad_out, transported)
        grad_costs = -settings.inv_temperature * weights * (
            grad_weights - (weights * grad_weights).sum(-1, keepdim=True))  # ∂L/∂D_l, (B, H, L)
        grad_costs = grad_costs.masked_fill(grad_costs.abs() < math.exp(context.floor), 0.0)  # negligible
        right_q, right_k = grad_out, v  # Z of the upstream gradients P̄ = L Zᵀ of A and of B
        if not context.euclidean:
            right_q = torch.cat([grad_out, q, q.square().sum(-1, keepdim=True)], dim=-1)  # (B, H, n, dv + d + 1)
            right_k = torch.cat([v, k, k.square().sum(-1, keepdim=True)], dim=-1)
        distance = pair_distances(q, k, valid_tokens) if context.euclidean else None
        grad_distance = q.new_zeros(b, h, n, n) if context.euclidean and not settings.hard else None
        grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        scratch = q.new_empty(context.buffer_size) if context.euclidean and not settings.hard else None
        for chunk, sort_q, sort_k in context.chunks(q, k):
            products_q = sort_q.jacobian_products(right_q)  # A Z, A (s⊙Z), A s
            products_k = sort_k.jacobian_products(right_k)  # B Z', B (s'⊙Z'), B s'
            if settings.hard:  # forward values from the permutations, the Jacobian from the soft kernels
                a_right, b_right = _gather_rows(right_q, sort_q.order), _gather_rows(right_k, sort_k.order)
            else:
                a_right, b_right = products_q[0], products_k[0]
            w = weights[..., chunk, None, None]  # (B, H, c, 1, 1)
            left_q, left_k = w * b_right[..., :dv], w * a_right[..., :dv]  # L of P̄_A = L Zᵀ and of P̄_B
            if not context.euclidean:
                g = grad_costs[..., chunk, None, None].expand(*left_q.shape[:-1], 1)
                left_q = torch.cat([left_q, -2.0 * g * b_right[..., dv:dv + d], g], dim=-1)
                left_k = torch.cat([left_k, -2.0 * g * a_right[..., dv:dv + d], g], dim=-1)
            if context.rank_mask is not None:  # padded ranks carry nothing
                left_q, left_k = left_q * context.rank_mask, left_k * context.rank_mask
            full_q = full_k = None
            if context.euclidean and settings.hard:
                full_q, full_k = _hard_full_rank(sort_q, sort_k, distance, grad_costs[..., chunk])
            elif context.euclidean:
                full_q = _query_full_rank(sort_q, sort_k, distance, grad_costs[..., chunk], grad_distance, scratch,
                                          context.lift)
                full_k = {key: term[..., chunk, :] * g_n for key, term, g_n in
                          zip(FULL_RANK_KEYS, key_terms, [grad_costs[..., chunk, None]] * 4)}
            values_q, transposed_q = sort_q.value_gradients(left_q, right_q, products_q, full_q)
            values_k, transposed_k = sort_k.value_gradients(left_k, right_k, products_k, full_k)
            grad_q[..., chunk] += values_q.transpose(-1, -2)
            grad_k[..., chunk] += values_k.transpose(-1, -2)
            if settings.hard:  # the direct terms go through the permutations: Aᵀ L and Bᵀ L are scatters
                transposed_q, transposed_k = _scatter_rows(left_q, sort_q.order), _scatter_rows(left_k, sort_k.order)
            grad_v += transposed_k[..., :dv].sum(2)  # Σ_l w_l B_lᵀ A_l Ō
            if not context.euclidean:  # D_l's explicit q, |q|², k, |k|² terms
                grad_q += transposed_q[..., dv:dv + d].sum(2) + 2.0 * q * transposed_q[..., -1:].sum(2)
                grad_k += transposed_k[..., dv:dv + d].sum(2) + 2.0 * k * transposed_k[..., -1:].sum(2)
            elif settings.hard:
                _hard_distance_backward(q, k, sort_q, sort_k, grad_costs[..., chunk], grad_q, grad_k)
        if grad_distance is not None:  # C_ij = ‖q_i − k_j‖: ∂C_ij/∂q_i = (q_i − k_j)/C_ij
            inverse = torch.where(distance > 0, grad_distance / distance, 0.0)  # (B, H, n, n), lifted
            grad_q += (q * inverse.sum(-1, keepdim=True) - inverse @ k) / context.lift
            grad_k += (k * inverse.sum(-2)[..., None] - inverse.transpose(-1, -2) @ q) / context.lift
        if valid_tokens is not None:  # results at padded tokens are discarded (see soft_sort.py)
            padded = ~valid_tokens[:, None, :, None]
            grad_q, grad_k, grad_v = (t.masked_fill_(padded, 0.0) for t in (grad_q, grad_k, grad_v))
        return grad_q * grad_scale, grad_k * grad_scale, grad_v * grad_scale, None, None


class _Context:
    """What forward and backward share: masks, the negligible floor, chunking and reused kernel buffers."""

    def __init__(self, q: Tensor, valid_tokens: Tensor | None, settings: EspSettings):
        b, h, n, d = q.shape
        self.settings, self.valid_tokens = settings, valid_tokens
        self.euclidean = settings.cost == "euclidean"
        self.floor = negligible_log(q.dtype, n)
        # Σ_l ḡ_l A_lᵀ B_l multiplies three factors as small as e^floor: computed times `lift` to stay normal
        self.lift = math.exp(-self.floor)
        self.ranks = valid_ranks(valid_tokens, n)  # (B, n)
        self.rank_mask = None if self.ranks is None else self.ranks[:, None, None, :, None].to(q.dtype)
        self.ones = valid_column(valid_tokens, q[..., 0])  # (B, 1, n, 1)
        size = settings.slice_chunk or max(1, KERNEL_BUDGET // (b * h * n * n))
        self.slices = [slice(start, min(start + size, d)) for start in range(0, d, size)]
        self.buffer_size = b * h * min(size, d) * n * n

    def chunks(self, q: Tensor, k: Tensor, build: bool = True):
        """Yield (slice of axes, SoftSortKernel of q, of k) chunk by chunk; kernels reuse two buffers."""
        buffers = (q.new_empty(self.buffer_size), q.new_empty(self.buffer_size)) if build else (None, None)
        for chunk in self.slices:
            yield chunk, *(SoftSortKernel(x[..., chunk].transpose(-1, -2), self.valid_tokens, self.ranks,
                                          self.settings.sort_temperature, self.floor, build, buffer)
                           for x, buffer in zip((q, k), buffers))


def _token_counts(valid_tokens: Tensor | None, b: int, n: int, like: Tensor) -> Tensor:
    if valid_tokens is None:
        return like.new_full((b, 1, 1, 1), float(n))
    return valid_tokens.sum(-1).to(like.dtype)[:, None, None, None]


def _gather_rows(x: Tensor, order: Tensor) -> Tensor:
    """x (B, H, n, p) by token -> (B, H, c, n, p) by rank: row r of slice l is x[order[l, r]]."""
    c = order.shape[2]
    return x[:, :, None].expand(-1, -1, c, -1, -1).gather(3, order[..., None].expand(-1, -1, -1, -1, x.shape[-1]))


def _scatter_rows(x: Tensor, order: Tensor) -> Tensor:
    """Inverse of `_gather_rows`: x (B, H, c, n, p) by rank -> (B, H, c, n, p) by token."""
    return torch.zeros_like(x).scatter(3, order[..., None].expand_as(x), x)


def _sqeuclidean_forward(rhs_q: Tensor, rhs_k: Tensor, sort_q: SoftSortKernel, sort_k: SoftSortKernel, dv: int
                         ) -> tuple[Tensor, Tensor]:
    """Slice costs (B, H, c) and T_l = A_lᵀ B_l V (B, H, c, n, dv), squared Euclidean cost."""
    applied_k = sort_k.normalise(rhs_k)  # B [V, K, |k|²]
    applied_q = sort_q.normalise(rhs_q)  # A [Q, |q|²]
    d = rhs_q.shape[-1] - 2
    cross = (applied_q[..., :d] * applied_k[..., dv:dv + d]).sum(-1)  # (AQ)_r·(BK)_r
    cost = (applied_q[..., d] + applied_k[..., dv + d] - 2.0 * cross).sum(-1)
    return cost, sort_q.apply_t(applied_k[..., :dv])


def _euclidean_forward(rhs_q: Tensor, rhs_k: Tensor, sort_q: SoftSortKernel, sort_k: SoftSortKernel,
                       key_terms: Tensor | None) -> tuple[Tensor, Tensor]:
    """Slice costs D_l = Σ_r (A C)_r·B_r (B, H, c) and T_l (B, H, c, n, dv), Euclidean cost.

    With key_terms (4, B, H, c, n), also writes the reductions of B ⊙ (A C) that backward needs.
    """
    applied_k = sort_k.normalise(rhs_k)  # B V
    weighted = sort_q.normalise(rhs_q, scaled=False).mul_(sort_k.kernel)  # (E_A C) ⊙ E_B, (B, H, c, n, n)
    both = sort_q.inv_norm * sort_k.inv_norm  # row scale of B ⊙ (A C), (B, H, c, n)
    if key_terms is None:
        per_rank = weighted.sum(-1) * both
    else:
        per_rank = _reduce_full_rank(key_terms, weighted, both, sort_k)[0]
    return per_rank.sum(-1), sort_q.apply_t(applied_k)


def _hard_forward(q: Tensor, k: Tensor, v: Tensor, sort_q: SoftSortKernel, sort_k: SoftSortKernel,
                  euclidean: bool) -> tuple[Tensor, Tensor]:
    """The same with exact permutations: rank r matches token order_q[r] to token order_k[r]."""
    squared = (_gather_rows(q, sort_q.order) - _gather_rows(k, sort_k.order)).square().sum(-1)  # (B, H, c, n)
    per_rank = squared.sqrt() if euclidean else squared
    matched_v = _gather_rows(v, sort_k.order)  # (B, H, c, n, dv)  B_l V
    if sort_q.rank_mask is not None:  # padded ranks match padded tokens: they carry nothing
        per_rank, matched_v = per_rank * sort_q.rank_mask, matched_v * sort_q.rank_mask[..., None]
    return per_rank.sum(-1), _scatter_rows(matched_v, sort_q.order)


def _hard_distance_backward(q: Tensor, k: Tensor, sort_q: SoftSortKernel, sort_k: SoftSortKernel,
                            grad_costs: Tensor, grad_q: Tensor, grad_k: Tensor) -> None:
    """∂/∂q, ∂/∂k of Σ_l ∂L/∂D_l Σ_r ‖q_σ(r) − k_π(r)‖ through the distances, in place."""
    diff = _gather_rows(q, sort_q.order) - _gather_rows(k, sort_k.order)  # (B, H, c, n, d)
    norm = diff.square().sum(-1, keepdim=True).sqrt()
    coef = torch.where(norm > 0, grad_costs[..., None, None] / norm, 0.0)
    if sort_q.rank_mask is not None:
        coef = coef * sort_q.rank_mask[..., None]
    grad_q += _scatter_rows(coef * diff, sort_q.order).sum(2)
    grad_k -= _scatter_rows(coef * diff, sort_k.order).sum(2)


def _query_full_rank(sort_q: SoftSortKernel, sort_k: SoftSortKernel, distance: Tensor, grad_costs: Tensor,
                     grad_distance: Tensor, scratch: Tensor, lift: float) -> dict[str, Tensor] | None:
    """∂L/∂A_l = ḡ_l B_l Cᵀ reduced to n-vectors, and lift · Σ_l ḡ_l A_lᵀ B_l added into grad_distance.

    grad_costs ḡ (B, H, c). A chunk in which every ḡ_l is exactly zero (weights that underflowed)
    contributes exactly nothing and is skipped; that test is a host sync, in backward only.
    """
    if not grad_costs.any():
        return None
    b, h, c, n = sort_q.values.shape
    both = sort_q.inv_norm * sort_k.inv_norm  # (B, H, c, n)  α β
    # Σ_l ḡ_l A_lᵀ B_l = Σ_l E_A,lᵀ diag(ḡ_l α_l β_l) E_B,l: one matmul over the chunk's slices stacked by rows
    row_scale = both * (grad_costs[..., None] * lift)
    scaled_k = torch.mul(sort_k.kernel, row_scale[..., None], out=scratch.view(b, h, c, n, n))
    grad_distance.view(b * h, n, n).baddbmm_(sort_q.kernel.view(b * h, c * n, n).transpose(1, 2),
                                             scaled_k.view(b * h, c * n, n))
    # A ⊙ (B Cᵀ) = diag(α β) (E_A ⊙ E_B Cᵀ)
    weighted = torch.bmm(sort_k.kernel.view(b * h, c * n, n), distance.view(b * h, n, n).transpose(1, 2),
                         out=scratch.view(b * h, c * n, n)).view(b, h, c, n, n).mul_(sort_q.kernel)
    terms = _reduce_full_rank(weighted.new_empty(4, b, h, c, n), weighted, both, sort_q)
    return dict(zip(FULL_RANK_KEYS, terms * grad_costs[..., None]))


def _hard_full_rank(sort_q: SoftSortKernel, sort_k: SoftSortKernel, distance: Tensor, grad_costs: Tensor
                    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Straight-through: ∂L/∂A_l = ḡ_l B_l Cᵀ and ∂L/∂B_l = ḡ_l A_l C with the permutations (rows of Cᵀ and
    C), reduced against the soft kernels, for the slices with ḡ_l ≠ 0."""
    b, h, c, n = sort_q.values.shape
    terms_q, terms_k = sort_q.values.new_zeros(2, 4, b * h * c, n)
    flat_grad = grad_costs.reshape(-1)
    active = flat_grad.nonzero().squeeze(-1)  # host sync, in backward only
    if active.numel():
        dist = distance.reshape(b * h, n, n)[active // c]  # (m, n, n)
        scale = flat_grad[active][:, None]
        order_q, order_k = sort_q.order.reshape(-1, n)[active], sort_k.order.reshape(-1, n)[active]
        for sort, upstream, terms in ((sort_q, dist.transpose(-1, -2).gather(1, order_k[..., None].expand(-1, -1, n)),
                                       terms_q),
                                      (sort_k, dist.gather(1, order_q[..., None].expand(-1, -1, n)), terms_k)):
            rows = _Rows(sort, active)
            weighted = upstream.mul_(rows.kernel()).mul_(rows.inv_norm[..., None])  # P ⊙ upstream
            active_terms = terms.new_empty(4, active.numel(), n)
            _reduce_full_rank(active_terms, weighted, None, rows)
            terms[:, active] = active_terms * scale
    return (dict(zip(FULL_RANK_KEYS, terms_q.view(4, b, h, c, n))),
            dict(zip(FULL_RANK_KEYS, terms_k.view(4, b, h, c, n))))


FULL_RANK_KEYS = ("rho", "by_values", "t_ranked", "t_ones")


class _Rows:
    """The flat (B·H·c) rows `active` of a SoftSortKernel's slices."""

    def __init__(self, sort: SoftSortKernel, active: Tensor):
        n = sort.values.shape[-1]
        self.sort, self.active, self.n = sort, active, n
        self.values = sort.values.reshape(-1, n)[active]  # (m, n)
        self.ranked = sort.ranked.reshape(-1, n)[active]
        self.inv_norm = sort.inv_norm.reshape(-1, n)[active]

    def kernel(self) -> Tensor:
        return self.sort.kernel.reshape(-1, self.n, self.n)[self.active]


def _reduce_full_rank(out: Tensor, weighted: Tensor, row_scale: Tensor | None, rows: SoftSortKernel | _Rows
                      ) -> Tensor:
    """The four n-vectors of M = diag(row_scale) · weighted, M = P ⊙ F, that `value_gradients` needs.

    out (4, ..., n) receives rowsum(M) ("rho"), M s ("by_values"), Mᵀ a ("t_ranked"), Mᵀ 1 ("t_ones");
    weighted (..., n, n); s, a: the values and ranked values of `rows`. The products are taken as
    (2, n) row blocks times (n, n), the fast orientation for two columns.
    """
    n = weighted.shape[-1]
    scale = torch.ones_like(rows.values) if row_scale is None else row_scale
    flat = weighted.reshape(-1, n, n)
    by_rank = torch.bmm(torch.stack([torch.ones_like(rows.values), rows.values], dim=-2).reshape(-1, 2, n),
                        flat.transpose(1, 2)).view(out.shape[1:-1] + (2, n))  # [M 1; M s]
    by_token = torch.bmm(torch.stack([scale * rows.ranked, scale], dim=-2).reshape(-1, 2, n), flat
                         ).view(out.shape[1:-1] + (2, n))  # [Mᵀ(scale ⊙ a); Mᵀ scale]
    out[0], out[1] = by_rank[..., 0, :] * scale, by_rank[..., 1, :] * scale
    out[2], out[3] = by_token[..., 0, :], by_token[..., 1, :]
    return out
