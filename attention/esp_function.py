"""Fast path of ESP attention (ESPFormer, arXiv 2502.07962): a custom autograd Function over chunks of slices.

Per head, with A_l, B_l the SoftSorts of q[:, l] and k[:, l] (`attention/soft_sort.py`):

    out = Σ_l w_l A_lᵀ (B_l V),   w = softmax(−τ D),   D_l = ⟨C, A_lᵀ B_l⟩

The plans U_l = A_lᵀ B_l are never formed. With `sqeuclidean`,
D_l = Σ_r (A|q|²)_r + (B|k|²)_r − 2 (AQ)_r·(BK)_r, so the forward products are thin, O(n²d) per slice; the
Euclidean cost is in `attention/esp_euclidean.py`.

The heads are flattened into G = B·H groups and the (group, slice) grid is cut into chunks of at most
CHUNK_BUDGET kernel entries (`chunk_plan`): at small n a chunk holds every slice of several heads (few large
ops), at large n a few slices of one head. Memory is O(chunk·n²): forward keeps only thin per-slice results
(T_l = A_lᵀ B_l V, the key- and query-side products, row normalisers, sorts) and backward rebuilds the
normalised kernels chunk by chunk.

Backward of a chunk: the upstream gradients of the soft sorts are formed as dense (n, n) matrices,
P̄_B = L_B Z_Bᵀ and P̄_A = L_A Z_Aᵀ (+ ḡ B Cᵀ with the Euclidean cost), from thin L (by rank) and Z (by token):

    sqeuclidean: L_B = [w AŌ, −2ḡ AQ, ḡ]  Z_B = [V, K, |k|²]      L_A = [w BV, −2ḡ BK, ḡ]  Z_A = [Ō, Q, |q|²]
    euclidean:   L_B = [w AŌ]             Z_B = [V]                L_A = [w BV]             Z_A = [Ō]

(Ō = ∂L/∂out, ḡ = ∂L/∂D), one matmul of inner size O(d) each, then `SoftSortKernel.backward`. The products
Bᵀ L_B and Aᵀ L_A (their cost columns) are the explicit gradients of V, K, |k|² and Q, |q|². Slices whose
Gibbs weight is below one float rounding of the largest (`backward_slices`) are skipped: at τ = 10 the
weights are peaked, and backward visits a fraction of the slices. With `hard`, forward uses the exact
permutations (gathers), backward the soft Jacobian at the same values (straight-through).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import esp_euclidean as euclid
from .soft_sort import SoftSortKernel, negligible_log, sort_slices, valid_column, valid_ranks

CHUNK_BUDGET = 1 << 20  # kernel entries per chunk when slice_chunk is None (4 MB in float32; 2-3 kernels live)


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


def chunk_plan(groups: int, slices: int, n: int, slice_chunk: int | None) -> list[tuple[slice, slice]]:
    """(groups, slices) index ranges covering the grid; automatic chunks hold ≤ CHUNK_BUDGET kernel entries
    (at least one slice of one group), whole heads first: a head's shared right-hand sides then multiply
    all its slices in one matmul. slice_chunk fixes the slices per chunk (all groups at once)."""
    if slice_chunk is not None:
        per_slice, per_group = min(slice_chunk, slices), groups
    else:
        per_slice = min(slices, max(1, CHUNK_BUDGET // (n * n)))
        per_group = min(groups, max(1, CHUNK_BUDGET // (per_slice * n * n)))
    return [(slice(g, min(g + per_group, groups)), slice(l, min(l + per_slice, slices)))
            for g in range(0, groups, per_group) for l in range(0, slices, per_slice)]


def active_plan(plan: list[tuple[slice, slice]], active: Tensor) -> list[tuple[slice, slice | Tensor]]:
    """`plan` visiting only the slices active (G, 1, L) in some group of each group block, packed into
    chunks of the plan's slice count: a range where the active slices are contiguous, else an index
    tensor. One host read."""
    blocks = list(dict.fromkeys((gs.start, gs.stop) for gs, _ in plan))
    per_slice = max(ls.stop - ls.start for _, ls in plan)
    used = torch.stack([active[start:stop, 0].any(0) for start, stop in blocks]).tolist()
    packed = []
    for (start, stop), flags in zip(blocks, used):
        indices = [axis for axis, flag in enumerate(flags) if flag]
        for first in range(0, len(indices), per_slice):
            piece = indices[first:first + per_slice]
            contiguous = piece[-1] - piece[0] == len(piece) - 1
            axes = slice(piece[0], piece[-1] + 1) if contiguous else torch.tensor(piece, device=active.device)
            packed.append((slice(start, stop), axes))
    return packed


def backward_slices(weights: Tensor) -> Tensor:
    """(G, 1, L) bool: the slices backward visits. Every gradient term of slice l carries the factor w_l
    (∂L/∂D_l = −τ w_l (∂L/∂w_l − Σ_m w_m ∂L/∂w_m) included), so slices with w_l < eps · max w / L add
    together less than one rounding of the largest term and are skipped; forward uses every slice."""
    relative = torch.finfo(weights.dtype).eps / weights.shape[-1]
    return weights >= weights.amax(-1, keepdim=True) * relative  # the largest weight is > 0


class EspFunction(torch.autograd.Function):
    """out (B, H, n, dv) from q, k (B, H, n, d) scaled by d^-1/2, v (B, H, n, dv), padded tokens zeroed."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, valid_tokens: Tensor | None, settings: EspSettings):
        heads = q.shape[:2]
        q, k, v, valid_tokens = _flatten_heads(q, k, v, valid_tokens)  # (G, 1, n, ·), (G, n)
        g, _, n, d = q.shape
        dv = v.shape[-1]
        context = _Context(q, v, valid_tokens, settings)
        soft, euclidean = not settings.hard, context.euclidean
        sorts = context.sort(q) + context.sort(k)  # ranked_q, order_q, ranked_k, order_k: (G, 1, L, n)
        ones = context.ones.expand(g, 1, n, 1)
        right_k = context.key_right(k, v)  # Z_B
        rhs_q = torch.cat([euclid.pair_distances(q, k, valid_tokens) if euclidean else context.coords(q), ones], -1)
        rhs_k = torch.cat([right_k, ones], dim=-1)
        slice_costs = q.new_empty(g, 1, d, dtype=torch.float64)  # summed in float64, see slice_weights
        transported = q.new_empty(g, 1, d, n, dv)  # T_l = A_lᵀ B_l V, by token
        # kept for backward, by rank: A [Q, |q|²], B Z_B, the row normalisers, and for the Euclidean cost the
        # reductions of B_l ⊙ ∂D_l/∂B_l (see esp_euclidean.py)
        query_side = q.new_empty(g, 1, d, n, d + 1) if soft and not euclidean else None
        key_side = q.new_empty(g, 1, d, n, right_k.shape[-1]) if soft else None
        inv_norms = q.new_empty(2, g, 1, d, n) if soft else None
        key_terms = q.new_empty(4, g, 1, d, n) if soft and euclidean and any(ctx.needs_input_grad[:3]) else None
        for (groups, axes), sort_q, sort_k in context.chunks(q, k, sorts, build=soft):
            at = (groups, slice(None), axes)
            if settings.hard:
                cost, matched_v = _hard_forward(q[groups], k[groups], v[groups], sort_q, sort_k, euclidean)
                transported[at] = sort_q.by_token(matched_v)
            else:
                key_side[at] = applied_k = sort_k.normalise(rhs_k[groups])  # B Z_B
                if euclidean:
                    cost = euclid.euclidean_costs(rhs_q[groups], sort_q, sort_k,
                                                  None if key_terms is None else key_terms[(slice(None),) + at])
                else:
                    query_side[at] = applied_q = sort_q.normalise(rhs_q[groups])  # A [Q, |q|²]
                    cross = (applied_q[..., :d] * applied_k[..., dv:dv + d]).sum(-1)  # (AQ)_r·(BK)_r
                    cost = (applied_q[..., d] + applied_k[..., -1] - 2.0 * cross).sum(-1, dtype=torch.float64)
                inv_norms[(slice(None),) + at] = torch.stack([sort_q.inv_norm, sort_k.inv_norm])
                transported[at] = sort_q.cols(applied_k[..., :dv] * sort_q.inv_norm[..., None])
            slice_costs[at] = cost
        weights = slice_weights(slice_costs, settings.inv_temperature, context.floor).to(q.dtype)  # (G, 1, L)
        out = torch.bmm(weights.view(g, 1, d), transported.view(g, d, n * dv)).view(g, 1, n, dv)  # Σ_l w_l T_l
        if settings.scale_by_n:
            out = out * _token_counts(valid_tokens, out)
        ctx.settings, ctx.heads = settings, heads
        ctx.save_for_backward(q, k, v, valid_tokens, weights, transported, query_side, key_side, inv_norms,
                              key_terms, *sorts)
        return out.view(*heads, n, dv)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, valid_tokens, weights, transported, query_side, key_side, inv_norms, key_terms, *sorts = \
            ctx.saved_tensors
        settings: EspSettings = ctx.settings
        g, _, n, d = q.shape
        dv = v.shape[-1]
        context = _Context(q, v, valid_tokens, settings)
        euclidean, soft = context.euclidean, not settings.hard
        grad_out = grad_out.reshape(g, 1, n, dv)
        if settings.scale_by_n:
            grad_out = grad_out * _token_counts(valid_tokens, grad_out)
        # backward is linear in grad_out: run it on grad_out / its largest entry and scale the result back, so
        # the loss scale cannot push products of kernel entries into denormal numbers (~100× slower matmuls)
        grad_scale = grad_out.abs().amax().clamp(min=torch.finfo(q.dtype).tiny)
        grad_out = grad_out / grad_scale
        grad_weights = torch.bmm(transported.view(g, d, n * dv), grad_out.reshape(g, n * dv, 1)).view(g, 1, d)
        grad_costs = -settings.inv_temperature * weights * (
            grad_weights - (weights * grad_weights).sum(-1, keepdim=True))  # ḡ_l = ∂L/∂D_l, (G, 1, L)
        grad_costs = grad_costs.masked_fill(grad_costs.abs() < math.exp(context.floor), 0.0)  # negligible
        right_q, right_k = torch.cat([grad_out, context.coords(q)], -1), context.key_right(k, v)  # Z_A, Z_B
        distance = euclid.pair_distances(q, k, valid_tokens) if euclidean else None
        grad_distance = q.new_zeros(g, 1, n, n) if euclidean and soft else None
        grads = [torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)]
        chunks = context.chunks(q, k, sorts, inv_norms, active=backward_slices(weights))
        for (groups, axes), sort_q, sort_k in chunks:
            at = (groups, slice(None), axes)
            w, gc = weights[at][..., None, None], grad_costs[at][..., None, None]  # (g, 1, c, 1, 1)
            if soft:  # forward's products
                applied_k, applied_q = key_side[at], None if query_side is None else query_side[at]
                applied_o = sort_q.rows(grad_out[groups])  # A Ō
            else:  # forward values from the permutations, the Jacobian from the soft kernels
                sort_q.normalise_kernel()
                sort_k.normalise_kernel()
                applied_k, applied_q = sort_k.by_rank(right_k[groups]), sort_q.by_rank(context.coords(q[groups]))
                applied_o = sort_q.by_rank(grad_out[groups])
            transposed = SoftSortKernel.cols_sum if soft else SoftSortKernel.by_token_sum  # Σ_l Aᵀ L, Σ_l Bᵀ L
            # key side
            left_k = context.left(applied_o, None if euclidean else applied_q[..., :d], w, gc)  # L_B
            upstream = context.upstream(left_k, right_k[groups])
            full_rank = None
            if euclidean and soft:  # ∂D/∂B = A C through forward's reductions
                full_rank = key_terms[(slice(None),) + at] * grad_costs[at][..., None]
            elif euclidean:
                upstream += euclid.hard_cost_upstream(sort_q.order, distance[groups], grad_costs[at])
            grads[1][groups, :, :, axes] += sort_k.backward(upstream, full_rank).transpose(-1, -2)
            direct_k = transposed(sort_k, left_k)  # Σ_l B_lᵀ L_B: ∂/∂[V, K, |k|²]
            grads[2][groups] += direct_k[..., :dv]
            # query side (the Euclidean one last: it scales sort_k's kernel)
            left_q = context.left(applied_k[..., :dv], None if euclidean else applied_k[..., dv:dv + d], w, gc)  # L_A
            if euclidean and soft:
                upstream = euclid.query_upstream(sort_q, sort_k, distance[groups], grad_costs[at], left_q,
                                                 right_q[groups], grad_distance[groups], context.buffers[2],
                                                 context.lift)
                grad_values = sort_q.backward(upstream) / context.lift
            else:
                upstream = context.upstream(left_q, right_q[groups])
                if euclidean:
                    upstream += euclid.hard_cost_upstream(sort_k.order, distance[groups].transpose(-1, -2),
                                                          grad_costs[at])
                    euclid.hard_distance_backward(q[groups], k[groups], sort_q, sort_k, grad_costs[at],
                                                  grads[0][groups], grads[1][groups])
                grad_values = sort_q.backward(upstream)
            grads[0][groups, :, :, axes] += grad_values.transpose(-1, -2)
            if not euclidean:  # explicit Q, |q|² and K, |k|² of D_l
                direct_q = transposed(sort_q, left_q[..., dv:])  # Σ_l A_lᵀ [−2ḡ BK, ḡ]
                grads[0][groups] += direct_q[..., :d] + 2.0 * q[groups] * direct_q[..., d:]
                grads[1][groups] += direct_k[..., dv:dv + d] + 2.0 * k[groups] * direct_k[..., -1:]
        grad_q, grad_k, grad_v = grads
        if grad_distance is not None:  # C_ij = ‖q_i − k_j‖: ∂C_ij/∂q_i = (q_i − k_j)/C_ij
            inverse = torch.where(distance > 0, grad_distance / distance, 0.0)  # (G, 1, n, n), lifted
            grad_q += (q * inverse.sum(-1, keepdim=True) - inverse @ k) / context.lift
            grad_k += (k * inverse.sum(-2)[..., None] - inverse.transpose(-1, -2) @ q) / context.lift
        if valid_tokens is not None:  # results at padded tokens are discarded (see soft_sort.py)
            padded = ~valid_tokens[:, None, :, None]
            grad_q, grad_k, grad_v = (t.masked_fill_(padded, 0.0) for t in (grad_q, grad_k, grad_v))
        heads = ctx.heads
        return (*(t.mul_(grad_scale).view(*heads, n, -1) for t in (grad_q, grad_k, grad_v)), None, None)


class _Context:
    """What forward and backward share: masks, the negligible floor, the chunk plan, reused kernel buffers,
    and the column layouts of the thin factors L (`left`) and Z (`coords`, `key_right`) of P̄ = L Zᵀ."""

    def __init__(self, q: Tensor, v: Tensor, valid_tokens: Tensor | None, settings: EspSettings):
        g, _, n, d = q.shape
        self.settings, self.valid_tokens, self.d, self.dv = settings, valid_tokens, d, v.shape[-1]
        self.euclidean = settings.cost == "euclidean"
        self.floor = negligible_log(q.dtype, n)
        # Σ_l ḡ_l A_lᵀ B_l multiplies three factors as small as e^floor: computed times `lift` to stay normal
        self.lift = math.exp(-self.floor)
        self.ranks = valid_ranks(valid_tokens, n)  # (G, n)
        self.ones = valid_column(valid_tokens, q[..., 0])  # (G, 1, n, 1)
        self.plan = chunk_plan(g, d, n, settings.slice_chunk)
        self.buffer_size = max((gs.stop - gs.start) * (ls.stop - ls.start) for gs, ls in self.plan) * n * n
        self.buffers: list[Tensor] = []

    def sort(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(ranked, order) of every slice of x (G, 1, n, L): (G, 1, L, n) each."""
        return sort_slices(x.transpose(-1, -2).contiguous(), self.valid_tokens, self.ranks)

    def chunks(self, q: Tensor, k: Tensor, sorts: list[Tensor] | tuple[Tensor, ...], inv_norms: Tensor | None = None,
               build: bool = True, active: Tensor | None = None):
        """Yield ((groups, slices), SoftSortKernel of q, of k) chunk by chunk. Kernels reuse flat buffers (a third
        one, `buffers[2]`, holds the upstream gradient in backward); with inv_norms (2, G, 1, L, n) they are
        built normalised. `active` (G, 1, L) bool: only active slices are visited (`active_plan`)."""
        plan = self.plan if active is None else active_plan(self.plan, active)
        count = 0 if not build else 2 if active is None else 3
        self.buffers = [q.new_empty(self.buffer_size) for _ in range(count)]
        t = self.settings.sort_temperature
        for groups, axes in plan:
            at = (groups, slice(None), axes)
            valid = None if self.valid_tokens is None else self.valid_tokens[groups]
            ranks = None if self.ranks is None else self.ranks[groups]
            kernels = []
            for side, x in enumerate((q, k)):
                norm = None if inv_norms is None else inv_norms[(side,) + at]
                kernels.append(SoftSortKernel(x[groups][..., axes].transpose(-1, -2).contiguous(), sorts[2 * side][at],
                                              sorts[2 * side + 1][at], valid, ranks, t, self.floor, inv_norm=norm,
                                              buffer=self.buffers[side] if build else None, build=build))
            yield (groups, axes), *kernels

    def coords(self, q: Tensor) -> Tensor:
        """[Q, |q|²] (…, n, d + 1) for the squared cost; nothing (…, n, 0) for the Euclidean one."""
        return q[..., :0] if self.euclidean else torch.cat([q, q.square().sum(-1, keepdim=True)], dim=-1)

    def key_right(self, k: Tensor, v: Tensor) -> Tensor:
        """Z_B = [V, K, |k|²] (sqeuclidean) or [V] (euclidean), (G, 1, n, ·) by token."""
        return v if self.euclidean else torch.cat([v, self.coords(k)], dim=-1)

    def left(self, first: Tensor, coords: Tensor | None, weights: Tensor, grad_costs: Tensor) -> Tensor:
        """L (g, 1, c, n, ·) by rank: [w·first, −2ḡ·coords, ḡ] (sqeuclidean) or w·first (euclidean)."""
        if self.euclidean:
            return weights * first
        constant = (grad_costs * torch.ones_like(first[..., :1]))
        return torch.cat([weights * first, (-2.0 * grad_costs) * coords, constant], dim=-1)

    def upstream(self, left: Tensor, right: Tensor) -> Tensor:
        """P̄ = L Zᵀ (g, 1, c, n, n) in buffers[2], for L (g, 1, c, n, p) by rank and Z (g, 1, n, p) by token."""
        g, h, c, n, p = left.shape
        out = self.buffers[2][:g * h * c * n * n].view(g * h, c * n, n)
        torch.bmm(left.reshape(g * h, c * n, p), right.reshape(g * h, n, p).transpose(1, 2), out=out)
        return out.view(g, h, c, n, n)


def _flatten_heads(q: Tensor, k: Tensor, v: Tensor, valid_tokens: Tensor | None):
    """(B, H, n, ·) -> (B·H, 1, n, ·); valid_tokens (B, n) -> (B·H, n)."""
    b, h, n = q.shape[:3]
    q, k, v = (x.reshape(b * h, 1, n, x.shape[-1]) for x in (q, k, v))
    return q, k, v, None if valid_tokens is None else valid_tokens.repeat_interleave(h, dim=0)


def _token_counts(valid_tokens: Tensor | None, like: Tensor) -> Tensor:
    if valid_tokens is None:
        return like.new_full((like.shape[0], 1, 1, 1), float(like.shape[2]))
    return valid_tokens.sum(-1).to(like.dtype)[:, None, None, None]


def _hard_forward(q: Tensor, k: Tensor, v: Tensor, sort_q: SoftSortKernel, sort_k: SoftSortKernel,
                  euclidean: bool) -> tuple[Tensor, Tensor]:
    """Slice costs (g, 1, c) and B_l V by rank with the exact permutations: rank r matches token
    order_q[r] to token order_k[r]."""
    squared = (sort_q.by_rank(q) - sort_k.by_rank(k)).square().sum(-1)  # (g, 1, c, n)
    per_rank = squared.sqrt() if euclidean else squared
    matched_v = sort_k.by_rank(v)  # (g, 1, c, n, dv)
    if sort_q.rank_mask is not None:  # padded ranks match padded tokens: they carry nothing
        per_rank, matched_v = per_rank * sort_q.rank_mask, matched_v * sort_q.rank_mask[..., None]
    return per_rank.sum(-1, dtype=torch.float64), matched_v
