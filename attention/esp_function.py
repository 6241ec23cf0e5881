"""Fast path of ESP attention (ESPFormer, arXiv 2502.07962): a custom autograd Function over chunks of slices.

Per head, with A_l, B_l the SoftSorts of q[:, l] and k[:, l] (`attention/soft_sort.py`):

    out = Σ_l w_l A_lᵀ (B_l V),   w = softmax(−τ D),   D_l = ⟨C, A_lᵀ B_l⟩

The plans U_l = A_lᵀ B_l are never formed. With `sqeuclidean`,
D_l = Σ_r (A|q|²)_r + (B|k|²)_r − 2 (AQ)_r·(BK)_r, so every product is thin, O(n²d) per slice; the Euclidean
cost is in `attention/esp_euclidean.py`.

Memory is O(chunk·n²): forward keeps only thin per-slice results (L·n·O(d) per head: T_l = A_lᵀ B_l V, the
key-side products, the row normalisers), and backward rebuilds the kernels chunk by chunk and
differentiates them by hand (`SoftSortKernel.value_gradients`) instead of storing (L, n, n) activations.
With `hard`, forward uses the exact permutations (gathers), backward the soft Jacobian (straight-through).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import esp_euclidean as euclid
from .soft_sort import SoftSortKernel, negligible_log, valid_column, valid_ranks

KERNEL_BUDGET = 1 << 20  # kernel entries per chunk and per side when slice_chunk is None (4 MB in float32)


@dataclass(frozen=True)
class EspSettings:
    sort_temperature: float
    inv_temperature: float
    cost: str
    hard: bool
    scale_by_n: bool
    slice_chunk: int | None


def slice_weights(slice_costs: Tensor, inv_temperature: float, floor: float) -> Tensor:
    """softmax_l(−τ D) over the slices whose weight is at least e^floor; the others get exactly 0.

    Pass D in float64: D grows like n (≈ 700 at n = 512), and one float32 ulp of it moves τ D by ~1e-3.
    """
    logits = -inv_temperature * slice_costs  # (B, H, L)
    kept = logits.softmax(-1) >= math.exp(floor)
    return logits.masked_fill(~kept, -torch.inf).softmax(-1)


class EspFunction(torch.autograd.Function):
    """out (B, H, n, dv) from q, k (B, H, n, d) scaled by d^-1/2, v (B, H, n, dv), padded tokens zeroed."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, valid_tokens: Tensor | None, settings: EspSettings):
        b, h, n, d = q.shape
        context = _Context(q, v, valid_tokens, settings)
        soft, euclidean = not settings.hard, context.euclidean
        ones = context.ones.expand(b, h, n, 1)
        right_q, right_k = context.rights(q, k, v)
        rhs_q = torch.cat([euclid.pair_distances(q, k, valid_tokens) if euclidean else right_q, ones], dim=-1)
        rhs_k = torch.cat([right_k, ones], dim=-1)
        slice_costs = q.new_empty(b, h, d, dtype=torch.float64)  # summed in float64, see slice_weights
        transported = q.new_empty(b, h, d, n, v.shape[-1])  # T_l = A_lᵀ B_l V, by token
        # kept for backward, by rank: P_A [Q, |q|²], P_B [V, (K, |k|²)], the row normalisers, and for the
        # Euclidean cost the reductions of ∂D_l/∂B_l ⊙ B_l (see esp_euclidean.py)
        query_side = q.new_empty(b, h, d, n, d + 1) if soft and not euclidean else None
        key_side = q.new_empty(b, h, d, n, right_k.shape[-1]) if soft else None
        inv_norms = q.new_empty(2, b, h, d, n) if soft else None
        key_terms = q.new_empty(4, b, h, d, n) if soft and euclidean and any(ctx.needs_input_grad[:3]) else None
        for chunk, sort_q, sort_k in context.chunks(q, k, build=soft):
            if settings.hard:
                cost, matched_v = _hard_forward(q, k, v, sort_q, sort_k, euclidean)
                transported[:, :, chunk] = sort_q.by_token(matched_v)
            else:
                key_side[:, :, chunk] = applied_k = sort_k.normalise(rhs_k)  # B [V, (K, |k|²)]
                if euclidean:
                    cost = euclid.euclidean_costs(rhs_q, sort_q, sort_k,
                                                  None if key_terms is None else key_terms[:, :, :, chunk])
                else:
                    query_side[:, :, chunk] = applied_q = sort_q.normalise(rhs_q)  # A [Q, |q|²]
                    cross = (applied_q[..., :d] * applied_k[..., -d - 1:-1]).sum(-1)  # (AQ)_r·(BK)_r
                    cost = (applied_q[..., d] + applied_k[..., -1] - 2.0 * cross).sum(-1, dtype=torch.float64)
                inv_norms[:, :, :, chunk] = torch.stack([sort_q.inv_norm, sort_k.inv_norm])
                transported[:, :, chunk] = sort_q.apply_t(applied_k[..., :v.shape[-1]])
            slice_costs[..., chunk] = cost
        weights = slice_weights(slice_costs, settings.inv_temperature, context.floor).to(q.dtype)  # (B, H, L)
        out = torch.einsum("bhl,bhlnd->bhnd", weights, transported)
        if settings.scale_by_n:
            out = out * _token_counts(valid_tokens, b, n, out)
        ctx.settings = settings
        ctx.save_for_backward(q, k, v, valid_tokens, weights, transported, query_side, key_side, inv_norms, key_terms)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, valid_tokens, weights, transported, query_side, key_side, inv_norms, key_terms = ctx.saved_tensors
        settings: EspSettings = ctx.settings
        b, h, n, d = q.shape
        context = _Context(q, v, valid_tokens, settings)
        if settings.scale_by_n:
            grad_out = grad_out * _token_counts(valid_tokens, b, n, grad_out)
        # backward is linear in grad_out: run it on grad_out / its largest entry and scale the result back, so
        # the loss scale cannot push products of kernel entries into denormal numbers (~100× slower matmuls)
        grad_scale = grad_out.abs().amax().clamp(min=torch.finfo(q.dtype).tiny)
        grad_out = grad_out / grad_scale
        grad_weights = torch.einsum("bhnd,bhlnd->bhl", grad_out, transported)
        grad_costs = -settings.inv_temperature * weights * (
            grad_weights - (weights * grad_weights).sum(-1, keepdim=True))  # ḡ_l = ∂L/∂D_l, (B, H, L)
        grad_costs = grad_costs.masked_fill(grad_costs.abs() < math.exp(context.floor), 0.0)  # negligible
        right_q, right_k = context.rights(q, k, v, grad_out)  # Z of the upstream gradients P̄ = L Zᵀ of A and B
        euclidean, soft = context.euclidean, not settings.hard
        distance = euclid.pair_distances(q, k, valid_tokens) if euclidean else None
        grad_distance = q.new_zeros(b, h, n, n) if euclidean and soft else None
        scratch = q.new_empty(context.buffer_size) if euclidean and soft else None
        grads = [torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)]
        for chunk, sort_q, sort_k in context.chunks(q, k):
            w, g = weights[..., chunk], grad_costs[..., chunk]  # (B, H, c)
            if soft:  # forward's row normalisers and thin products: no ones column, fewer columns recomputed
                sort_q.inv_norm, sort_k.inv_norm = inv_norms[:, :, :, chunk]
                b_right = key_side[:, :, chunk]  # B Z_B
            else:  # forward values from the permutations, the Jacobian from the soft kernels
                b_right = sort_k.by_rank(right_k)
            left_q = context.left_q(b_right, w, g)
            known_q = None if query_side is None else query_side[:, :, chunk]  # A [Q, |q|²]
            products_q = sort_q.backward_products(left_q, right_q, known_q)
            a_right = products_q[0] if soft else sort_q.by_rank(right_q)  # A Z_A
            left_k = context.left_k(a_right, w, g)
            products_k = sort_k.backward_products(left_k, right_k, b_right if soft else None)
            full_q = full_k = None
            if euclidean and soft:
                full_q = euclid.query_full_rank(sort_q, sort_k, distance, g, grad_distance, scratch, context.lift)
                full_k = euclid.key_full_rank(key_terms[:, :, :, chunk], g)
            elif euclidean:
                full_q, full_k = euclid.hard_full_rank(sort_q, sort_k, distance, g)
                euclid.hard_distance_backward(q, k, sort_q, sort_k, g, grads[0], grads[1])
            grads[0][..., chunk] += sort_q.value_gradients(left_q, right_q, products_q, full_q).transpose(-1, -2)
            grads[1][..., chunk] += sort_k.value_gradients(left_k, right_k, products_k, full_k).transpose(-1, -2)
            if soft:  # Σ_l Aᵀ L_A and Σ_l Bᵀ L_B
                transposed_q, transposed_k = products_q[4], products_k[4]
            else:  # the direct terms go through the permutations: Aᵀ L and Bᵀ L are scatters
                transposed_q, transposed_k = sort_q.by_token(left_q), sort_k.by_token(left_k)
            context.add_direct_gradients(grads, q, k, transposed_q.sum(2), transposed_k.sum(2))
        grad_q, grad_k, grad_v = grads
        if grad_distance is not None:  # C_ij = ‖q_i − k_j‖: ∂C_ij/∂q_i = (q_i − k_j)/C_ij
            inverse = torch.where(distance > 0, grad_distance / distance, 0.0)  # (B, H, n, n), lifted
            grad_q += (q * inverse.sum(-1, keepdim=True) - inverse @ k) / context.lift
            grad_k += (k * inverse.sum(-2)[..., None] - inverse.transpose(-1, -2) @ q) / context.lift
        if valid_tokens is not None:  # results at padded tokens are discarded (see soft_sort.py)
            padded = ~valid_tokens[:, None, :, None]
            grad_q, grad_k, grad_v = (t.masked_fill_(padded, 0.0) for t in (grad_q, grad_k, grad_v))
        return grad_q * grad_scale, grad_k * grad_scale, grad_v * grad_scale, None, None


class _Context:
    """What forward and backward share: masks, the negligible floor, chunking, reused kernel buffers, and
    the column layout of the thin matrices (Z = `rights`, L = `lefts`) of the upstream gradients P̄ = L Zᵀ."""

    def __init__(self, q: Tensor, v: Tensor, valid_tokens: Tensor | None, settings: EspSettings):
        b, h, n, d = q.shape
        self.settings, self.valid_tokens, self.d, self.dv = settings, valid_tokens, d, v.shape[-1]
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

    def rights(self, q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Z_A, Z_B (B, H, n, ·): what A and B multiply. Columns the forward already applies come first:
        sqeuclidean [Q, |q|², Ō] and [V, K, |k|²]; euclidean [Ō] and [V]. Forward passes no grad_out."""
        tail = [] if grad_out is None else [grad_out]
        if self.euclidean:
            return (tail[0] if tail else q[..., :0]), v
        squares = (q.square().sum(-1, keepdim=True), k.square().sum(-1, keepdim=True))
        return torch.cat([q, squares[0], *tail], dim=-1), torch.cat([v, k, squares[1]], dim=-1)

    def left_q(self, b_right: Tensor, weights: Tensor, grad_costs: Tensor) -> Tensor:
        """L_A (B, H, c, n, ·) by rank, matching Z_A of `rights`, from B Z_B (forward values):
        P̄_A = w Y Ōᵀ + ḡ (1 |q|²ᵀ − 2 BK Qᵀ), Y = B V."""
        d, dv = self.d, self.dv
        w, g = weights[..., None, None], grad_costs[..., None, None]  # (B, H, c, 1, 1)
        if self.euclidean:
            return self._mask(w * b_right)
        ones = torch.ones_like(b_right[..., :1]) * g
        return self._mask(torch.cat([-2.0 * g * b_right[..., dv:dv + d], ones, w * b_right[..., :dv]], dim=-1))

    def left_k(self, a_right: Tensor, weights: Tensor, grad_costs: Tensor) -> Tensor:
        """L_B (B, H, c, n, ·) by rank, matching Z_B, from A Z_A:
        P̄_B = w AŌ Vᵀ + ḡ (1 |k|²ᵀ − 2 AQ Kᵀ)."""
        d = self.d
        w, g = weights[..., None, None], grad_costs[..., None, None]
        if self.euclidean:
            return self._mask(w * a_right)
        ones = torch.ones_like(a_right[..., :1]) * g
        return self._mask(torch.cat([w * a_right[..., d + 1:], -2.0 * g * a_right[..., :d], ones], dim=-1))

    def _mask(self, left: Tensor) -> Tensor:
        """Padded ranks carry nothing."""
        return left if self.rank_mask is None else left * self.rank_mask

    def add_direct_gradients(self, grads: list[Tensor], q: Tensor, k: Tensor, transposed_q: Tensor,
                             transposed_k: Tensor) -> None:
        """The terms of Σ_l Aᵀ L_A and Σ_l Bᵀ L_B (B, H, n, ·) that are gradients themselves: V, and with the
        squared cost the explicit Q, |q|², K, |k|² of D_l."""
        d, dv = self.d, self.dv
        grads[2] += transposed_k[..., :dv]  # Σ_l w_l B_lᵀ A_l Ō
        if not self.euclidean:
            grads[0] += transposed_q[..., :d] + 2.0 * q * transposed_q[..., d:d + 1]
            grads[1] += transposed_k[..., dv:dv + d] + 2.0 * k * transposed_k[..., -1:]


def _token_counts(valid_tokens: Tensor | None, b: int, n: int, like: Tensor) -> Tensor:
    if valid_tokens is None:
        return like.new_full((b, 1, 1, 1), float(n))
    return valid_tokens.sum(-1).to(like.dtype)[:, None, None, None]


def _hard_forward(q: Tensor, k: Tensor, v: Tensor, sort_q: SoftSortKernel, sort_k: SoftSortKernel,
                  euclidean: bool) -> tuple[Tensor, Tensor]:
    """Slice costs (B, H, c) and B_l V by rank with the exact permutations: rank r matches token
    order_q[r] to token order_k[r]."""
    squared = (sort_q.by_rank(q) - sort_k.by_rank(k)).square().sum(-1)  # (B, H, c, n)
    per_rank = squared.sqrt() if euclidean else squared
    matched_v = sort_k.by_rank(v)  # (B, H, c, n, dv)
    if sort_q.rank_mask is not None:  # padded ranks match padded tokens: they carry nothing
        per_rank, matched_v = per_rank * sort_q.rank_mask, matched_v * sort_q.rank_mask[..., None]
    return per_rank.sum(-1, dtype=torch.float64), matched_v
