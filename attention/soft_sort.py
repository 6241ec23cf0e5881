"""SoftSort kernels for ESP attention (ESPFormer, arXiv 2502.07962): built in few passes, differentiated by hand.

SoftSort (Prillo & Eisenschlos 2020, squared distance) of the values s ∈ R^n of one slice, with
a_1 ≥ … ≥ a_n their order statistics, is P[r, i] = softmax_i(−(a_r − s_i)² / t). Forward builds it
unnormalised, E[r, i] = exp(−(a_r − s_i)² / t), and takes the row normalisers α = 1 / rowsum(E) from a
trailing ones column of its first product (`normalise`); backward, with α known, builds P = diag(α) E
directly (log α enters the exponent, no extra pass).

The kernel is built in four in-place passes over (n, n): a_r − s_i on values pre-scaled by t^-1/2 (exact
differences: the rank-2 matmul form 2as − a² − s² loses ~1e-4 of every entry to float32 cancellation),
its negated square, a clamp at `floor`, exp. The clamp matters: exp is ~20× slower on arguments that
underflow, and denormal numbers make CPU matmuls ~100× slower. e^floor is chosen so that a product of
two kernel entries and 1/n² is still a normal float; the mass it adds is < n·e^floor ≈ 1e-13 of a row at
n = 1,024 in float32, far below rounding.

Backward (`backward`) takes the upstream gradient P̄ = ∂L/∂P as a dense (n, n) matrix per slice: with
Λ = P ⊙ (P̄ − ρ 1ᵀ), ρ_r = Σ_i P[r, i] P̄[r, i] (the softmax backward) and ∂logit[r, i]/∂s_i = 2(a_r − s_i)/t,
∂L/∂s_i = (2/t) Σ_r Λ[r, i] (a_r − s_i), plus ∂L/∂a_r = (2/t) Σ_i Λ[r, i] s_i (rows of Λ sum to zero) at
token order[r]: an elementwise product, a row sum, an update and two reductions over (n, n).

Padding without sentinels: the valid tokens of a batch item take ranks 0 .. n_valid − 1. The kernel
is not masked; instead every right-hand side has zero rows at padded tokens and its trailing "ones"
column is the valid-token indicator, padded ranks get α = 0 (zero rows of P), padded tokens have value 0
(so their columns of Λ add nothing to ∂a), and results at padded tokens are discarded by the caller.
So padded tokens neither send nor receive mass.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def negligible_log(dtype: torch.dtype, n: int) -> float:
    """log of the smallest kernel entry / slice weight kept: e^floor · e^floor / n² is still a normal float."""
    return 0.5 * math.log(torch.finfo(dtype).tiny) + math.log(n) + 1.0


def valid_column(valid_tokens: Tensor | None, like: Tensor) -> Tensor:
    """(B, 1, n, 1): 1 at valid tokens, 0 at padded ones (all ones without padding); like: (B, H, ..., n)."""
    if valid_tokens is None:
        return like.new_ones(like.shape[0], 1, like.shape[-1], 1)
    return valid_tokens[:, None, :, None].to(like.dtype)


def valid_ranks(valid_tokens: Tensor | None, n: int) -> Tensor | None:
    """(B, n) bool, True for ranks 0 .. n_valid − 1 of each batch item (valid_tokens (B, n), True = real)."""
    if valid_tokens is None:
        return None
    counts = valid_tokens.sum(-1, keepdim=True)  # (B, 1)
    return torch.arange(n, device=valid_tokens.device) < counts


def sort_slices(values: Tensor, valid_tokens: Tensor | None, ranks: Tensor | None) -> tuple[Tensor, Tensor]:
    """Order statistics a (descending, 0 at padded ranks) and `order` (the token of rank r) of values (B, H, c, n)."""
    key = values if valid_tokens is None else values.masked_fill(~valid_tokens[:, None, None, :], -math.inf)
    ranked, order = key.sort(dim=-1, descending=True)
    return (ranked if ranks is None else ranked.masked_fill(~ranks[:, None, None, :], 0.0)), order


class SoftSortKernel:
    """The SoftSort kernels of a chunk of slices, (B, H, c, n, n) with rows by rank and columns by token.

    values (B, H, c, n): slice values, zero at padded tokens; ranked, order: from `sort_slices`;
    valid_tokens / ranks: (B, n) bool or None. Without inv_norm the kernel is E (call `normalise`), with
    inv_norm (B, H, c, n) it is P = diag(inv_norm) E. `buffer` (flat, reused across chunks: fresh large
    tensors page-fault) receives the kernel; build=False keeps only the sort (hard permutations).
    """

    def __init__(self, values: Tensor, ranked: Tensor, order: Tensor, valid_tokens: Tensor | None,
                 ranks: Tensor | None, sort_temperature: float, floor: float, *, inv_norm: Tensor | None = None,
                 buffer: Tensor | None = None, build: bool = True):
        self.values, self.ranked, self.order = values, ranked, order
        self.sort_temperature = sort_temperature
        self.rank_mask = None if ranks is None else ranks[:, None, None, :]  # (B, 1, 1, n)
        self.ones = valid_column(valid_tokens, values)[:, :, None]  # (B, 1, 1, n, 1), 1 at valid tokens
        self.inv_norm = inv_norm
        self.kernel = self._build(floor, buffer) if build else None
        self._token_rows: Tensor | None = None  # flat row index of `by_token`, made on first use

    def _build(self, floor: float, buffer: Tensor | None) -> Tensor:
        scale = self.sort_temperature ** -0.5
        a, s = self.ranked[..., :, None] * scale, self.values[..., None, :] * scale  # (.., n, 1), (.., 1, n)
        if a.requires_grad or s.requires_grad:  # the dense (autograd) path
            return (-(a - s).square()).clamp(min=floor).exp()
        shape = a.shape[:-1] + s.shape[-1:]
        logits = torch.sub(a, s, out=None if buffer is None else buffer[:math.prod(shape)].view(shape))
        if self.inv_norm is None:
            torch.addcmul(logits.new_zeros(()), logits, logits, value=-1.0, out=logits)  # −(a − s)²/t
            return logits.clamp_(min=floor).exp_()
        log_norm = self.inv_norm.log()[..., None]  # −inf at padded ranks: zero rows
        torch.addcmul(log_norm, logits, logits, value=-1.0, out=logits)  # log α_r − (a_r − s_i)²/t
        return logits.clamp_(min=log_norm + floor).exp_()  # = α_r · max(E[r, i], e^floor), as in forward

    # -- products ---------------------------------------------------------------------------------
    def rows(self, rhs: Tensor) -> Tensor:
        """kernel @ rhs (B, H, c, n, p) by rank; rhs (B, H, n, p) shared by the slices (their rows are stacked
        into one matmul) or (B, H, c, n, p) per slice, by token."""
        b, h, c, n, _ = self.kernel.shape
        if rhs.dim() == 4:
            return torch.bmm(self.kernel.reshape(b * h, c * n, n), rhs.reshape(b * h, n, -1)).view(b, h, c, n, -1)
        return torch.bmm(self.kernel.reshape(b * h * c, n, n), rhs.reshape(b * h * c, n, -1)).view(b, h, c, n, -1)

    def cols(self, rhs: Tensor) -> Tensor:
        """kernelᵀ @ rhs (B, H, c, n, p) by token, for rhs (B, H, c, n, p) by rank (as (rhsᵀ kernel)ᵀ, the
        faster orientation at large n; the result is a transposed view)."""
        b, h, c, n, _ = self.kernel.shape
        rows = rhs.reshape(b * h * c, n, -1).transpose(1, 2)  # (B·H·c, p, n)
        return torch.bmm(rows, self.kernel.reshape(b * h * c, n, n)).view(b, h, c, -1, n).transpose(-1, -2)

    def cols_sum(self, rhs: Tensor) -> Tensor:
        """Σ_l kernel_lᵀ @ rhs_l (B, H, n, p) by token, for rhs (B, H, c, n, p) by rank: one matmul of the
        slices stacked by rows (inner size c·n), as (rhsᵀ kernel)ᵀ; the result is a transposed view."""
        b, h, c, n, _ = self.kernel.shape
        rows = rhs.reshape(b * h, c * n, -1).transpose(1, 2)  # (B·H, p, c·n)
        return torch.bmm(rows, self.kernel.reshape(b * h, c * n, n)).view(b, h, -1, n).transpose(-1, -2)

    def normalise(self, rhs_with_ones: Tensor, scaled: bool = True) -> Tensor:
        """P @ X for rhs_with_ones = [X, valid_column] (its last column gives the row sums); sets inv_norm.

        Returns (B, H, c, n, p); scaled=False returns E @ X (rows not multiplied by inv_norm).
        """
        product = self.rows(rhs_with_ones)
        inv_norm = 1.0 / product[..., -1]  # row sums ≥ 1 on valid ranks (the diagonal entry is e^0)
        self.inv_norm = inv_norm if self.rank_mask is None else inv_norm.masked_fill(~self.rank_mask, 0.0)
        return product[..., :-1] * self.inv_norm[..., None] if scaled else product[..., :-1]

    def normalise_kernel(self) -> None:
        """E -> P in place (hard sorts: backward builds the soft kernels without forward's normalisers)."""
        self.normalise(self.ones.squeeze(2).expand(*self.kernel.shape[:2], -1, 1))
        self.kernel.mul_(self.inv_norm[..., None])

    def normalised(self) -> Tensor:
        """P itself with zero columns at padded tokens, (B, H, c, n, n): for the dense path only."""
        return self.kernel * self.inv_norm[..., None] * self.ones.transpose(-1, -2)

    # -- exact permutations (hard sorts) -----------------------------------------------------------
    def by_rank(self, x: Tensor) -> Tensor:
        """x (B, H, n, p) by token -> (B, H, c, n, p) by rank: row r is x[order[r]] (the exact permutation)."""
        b, h, c, n = self.order.shape
        rows = (torch.arange(b * h, device=x.device).view(b, h, 1, 1) * n + self.order).reshape(-1)
        return x.reshape(b * h * n, -1).index_select(0, rows).view(b, h, c, n, -1)

    def by_token(self, x: Tensor) -> Tensor:
        """Inverse of `by_rank`: x (B, H, c, n, p) by rank -> by token (row i is x[rank of token i])."""
        b, h, c, n = self.order.shape
        if self._token_rows is None:
            rank_of = torch.empty_like(self.order).scatter_(-1, self.order, torch.arange(n, device=x.device)
                                                            .expand_as(self.order))
            self._token_rows = (torch.arange(b * h * c, device=x.device).view(b, h, c, 1) * n + rank_of).reshape(-1)
        return x.reshape(b * h * c * n, -1).index_select(0, self._token_rows).view(x.shape)

    def by_token_sum(self, x: Tensor) -> Tensor:
        """Σ over the slices of `by_token` (B, H, n, p): the permutation analogue of `cols_sum`."""
        return self.by_token(x).sum(2)

    # -- backward ---------------------------------------------------------------------------------
    def backward(self, upstream: Tensor, full_rank: Tensor | None = None) -> Tensor:
        """∂L/∂values (B, H, c, n), by token, for the upstream gradient P̄ (B, H, c, n, n) (overwritten).

        The kernel must be P (normalised). full_rank (4, B, H, c, n): for a further upstream term F not in
        P̄, the reductions rowsum(P⊙F), (P⊙F) s, (P⊙F)ᵀ a, (P⊙F)ᵀ 1 (see esp_euclidean.reduce_full_rank).
        """
        b, h, c, n, _ = upstream.shape
        s, a = self.values, self.ranked
        lam = upstream.mul_(self.kernel)  # P ⊙ P̄
        rho = lam.sum(-1)  # (B, H, c, n)  ρ_r
        if full_rank is not None:
            rho = rho + full_rank[0]
        lam.addcmul_(rho[..., None], self.kernel, value=-1.0)  # Λ, without its full-rank part P ⊙ F
        flat = lam.view(b * h * c, n, n)
        by_rank = torch.bmm(s.reshape(-1, 1, n), flat.transpose(1, 2)).view(b, h, c, n)  # Σ_i Λ[r, i] s_i
        weights = torch.stack([a, torch.ones_like(a)], dim=-2).view(-1, 2, n)
        by_token = torch.bmm(weights, flat).view(b, h, c, 2, n)  # Σ_r a_r Λ[r, i], Σ_r Λ[r, i]
        if full_rank is not None:
            by_rank = by_rank + full_rank[1]
            by_token = by_token + full_rank[2:].movedim(0, -2)
        grad = (by_token[..., 0, :] - s * by_token[..., 1, :]).scatter_add_(-1, self.order, by_rank)
        return grad * (2.0 / self.sort_temperature)
