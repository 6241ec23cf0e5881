"""SoftSort kernels for ESP attention (ESPFormer, arXiv 2502.07962): built in few passes, differentiated by hand.

SoftSort (Prillo & Eisenschlos 2020, squared distance) of the values s ∈ R^n of one slice, with
a_1 ≥ … ≥ a_n their order statistics, is P[r, i] = softmax_i(−(a_r − s_i)² / t). We keep it
unnormalised: E[r, i] = exp(−(a_r − s_i)² / t) and P = diag(inv_norm) E, so every product with P is
a matmul with E plus a scaling of thin (n, p) matrices, and P itself is never written out.

The kernel is built in four in-place passes over (n, n): a_r − s_i on values pre-scaled by t^-1/2 (exact
differences: the rank-2 matmul form 2as − a² − s² loses ~1e-4 of every entry to float32 cancellation),
its negated square, a clamp at `floor`, exp. The clamp matters: exp is ~20× slower on arguments that
underflow, and denormal numbers make CPU matmuls ~100× slower. e^floor is chosen so that a product of
two kernel entries and 1/n² is still a normal float; the mass it adds is < n·e^floor ≈ 1e-13 of a row at
n = 1,024 in float32, far below rounding. Row sums come from a trailing column of the first
right-hand side (`normalise`).

Padding without sentinels: the valid tokens of a batch item take ranks 0 .. n_valid − 1. The kernel
is not masked; instead every right-hand side has zero rows at padded tokens and its trailing "ones"
column is the valid-token indicator, padded ranks get inv_norm = 0, and results at padded tokens
are discarded by the caller. So padded tokens neither send nor receive mass.
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


class SoftSortKernel:
    """The unnormalised SoftSort kernels of a chunk of slices, (B, H, c, n, n), and products with them.

    values: (B, H, c, n) slice values, zero at padded tokens; valid_tokens / ranks: (B, n) bool or None.
    `buffer` (flat, reused across chunks: fresh large tensors page-fault) receives the kernel.
    build=False only sorts (hard permutations need no kernel).
    """

    def __init__(self, values: Tensor, valid_tokens: Tensor | None, ranks: Tensor | None,
                 sort_temperature: float, floor: float, build: bool = True, buffer: Tensor | None = None):
        self.sort_temperature, self.values = sort_temperature, values.contiguous()
        key = self.values if valid_tokens is None else self.values.masked_fill(~valid_tokens[:, None, None, :],
                                                                              -math.inf)
        ranked, self.order = key.sort(dim=-1, descending=True)  # (B, H, c, n) a_r and the token of rank r
        self.rank_mask = None if ranks is None else ranks[:, None, None, :]  # (B, 1, 1, n)
        self.ranked = ranked if ranks is None else ranked.masked_fill(~self.rank_mask, 0.0)
        self.ones = valid_column(valid_tokens, values)[:, :, None]  # (B, 1|H, 1, n, 1), 1 at valid tokens
        self.kernel = self._build(floor, buffer) if build else None  # (B, H, c, n, n) E[r, i]
        self.inv_norm: Tensor | None = None  # (B, H, c, n), set by `normalise`
        self._token_rows: Tensor | None = None  # flat row index of `by_token`, made on first use

    def _build(self, floor: float, buffer: Tensor | None) -> Tensor:
        scale = self.sort_temperature ** -0.5
        a, s = self.ranked[..., :, None] * scale, self.values[..., None, :] * scale  # (.., n, 1), (.., 1, n)
        if a.requires_grad or s.requires_grad:  # the dense (autograd) path
            return (-(a - s).square()).clamp(min=floor).exp()
        shape = a.shape[:-1] + s.shape[-1:]
        logits = torch.sub(a, s, out=None if buffer is None else buffer[:math.prod(shape)].view(shape))
        torch.addcmul(logits.new_zeros(()), logits, logits, value=-1.0, out=logits)  # −(a − s)²/t
        return logits.clamp_(min=floor).exp_()

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

    # -- products with P = diag(inv_norm) E --------------------------------------------------------
    # E[r, i] = K[order[r], i] for the symmetric kernel K[j, i] = exp(−(s_j − s_i)²/t), so
    # Eᵀ X = by_token(E by_token(X)): transposed products are plain ones on permuted thin matrices,
    # and can share one matmul (one read of the kernel) with the plain ones.
    def _matmul(self, rhs: Tensor) -> Tensor:
        """E @ rhs; rhs (B, H, n, p) shared by the slices or (B, H, c, n, p) per slice."""
        b, h, c, n, _ = self.kernel.shape
        if rhs.dim() == 4:  # one right-hand side for all c slices: stack the slices' rows
            return torch.bmm(self.kernel.reshape(b * h, c * n, n), rhs.reshape(b * h, n, -1)).view(b, h, c, n, -1)
        return torch.bmm(self.kernel.reshape(b * h * c, n, n), rhs.reshape(b * h * c, n, -1)).view(b, h, c, n, -1)

    def normalise(self, rhs_with_ones: Tensor, scaled: bool = True) -> Tensor:
        """P @ X for rhs_with_ones = [X, valid_column], whose last column gives the row sums.

        Returns (B, H, c, n, p); scaled=False returns E @ X (rows not multiplied by inv_norm).
        """
        product = self._matmul(rhs_with_ones)
        inv_norm = 1.0 / product[..., -1]  # row sums ≥ 1 on valid ranks (the diagonal entry is e^0)
        self.inv_norm = inv_norm if self.rank_mask is None else inv_norm.masked_fill(~self.rank_mask, 0.0)
        return product[..., :-1] * self.inv_norm[..., None] if scaled else product[..., :-1]

    def apply_t(self, rhs: Tensor) -> Tensor:
        """Pᵀ @ rhs for rhs (B, H, c, n, p) indexed by rank: (B, H, c, n, p) indexed by token."""
        return self.by_token(self._matmul(self.by_token(rhs * self.inv_norm[..., None])))

    def apply_t_thin(self, rhs: Tensor) -> Tensor:
        """`apply_t` for two columns, as (2, n) row blocks times Eᵀ (the fast orientation): (B, H, c, n, 2)."""
        b, h, c, n, _ = self.kernel.shape
        rows = self.by_token(rhs * self.inv_norm[..., None]).transpose(-1, -2).reshape(-1, 2, n)
        product = torch.bmm(rows, self.kernel.reshape(-1, n, n).transpose(1, 2))  # (B·H·c, 2, n) by rank
        return self.by_token(product.view(b, h, c, 2, n).transpose(-1, -2))

    def normalised(self) -> Tensor:
        """P itself with zero columns at padded tokens, (B, H, c, n, n): for the dense path only."""
        return self.kernel * self.inv_norm[..., None] * self.ones.transpose(-1, -2)

    # -- backward ---------------------------------------------------------------------------------
    def backward_products(self, upstream_left: Tensor, upstream_right: Tensor, known: Tensor | None = None
                          ) -> tuple[Tensor, ...]:
        """The products the SoftSort backward of P̄ = L Zᵀ needs, from one matmul with the kernel.

        upstream_left L (B, H, c, n, p) by rank; upstream_right Z (B, H, n, p) by token; `known`: the first
        columns of P Z, kept from the forward pass. Returns P Z, P (s⊙Z), P s (by rank) and Pᵀ(a⊙L), Pᵀ L
        (by token). Uses inv_norm if set (kept from forward), else gets it from a valid column.
        """
        s, a = self.values[..., None], self.ranked[..., None]  # (B, H, c, n, 1)
        z = _per_slice(upstream_right)
        p, skip = z.shape[-1], 0 if known is None else known.shape[-1]
        columns = [z[..., skip:].expand(*s.shape[:-1], -1), s * z, s]
        if self.inv_norm is None:  # hard sorts: no forward kernel, so no row sums yet
            self.normalise(torch.cat([s, self.ones.expand_as(s)], dim=-1))
        transposed = self.by_token(torch.cat([a * upstream_left, upstream_left], dim=-1) * self.inv_norm[..., None])
        product = self._matmul(torch.cat([*columns, transposed], dim=-1))
        plain = product[..., :2 * p - skip + 1] * self.inv_norm[..., None]
        pz = plain[..., :p - skip] if known is None else torch.cat([known, plain[..., :p - skip]], dim=-1)
        transposed = self.by_token(product[..., 2 * p - skip + 1:])
        return pz, plain[..., p - skip:2 * p - skip], plain[..., -1], transposed[..., :p], transposed[..., p:]

    def value_gradients(self, upstream_left: Tensor, upstream_right: Tensor, products: tuple[Tensor, ...],
                        full_rank: dict[str, Tensor] | None = None) -> Tensor:
        """Gradient w.r.t. the slice values (B, H, c, n), by token, of Σ_ri P̄[r, i] P[r, i], P̄ = L Zᵀ (+ F).

        products: from `backward_products`; full_rank: for a full-rank part F of P̄, the n-vectors
        rho = rowsum(P⊙F), by_values = (P⊙F) s, t_ranked = (P⊙F)ᵀ a, t_ones = (P⊙F)ᵀ 1.

        With Λ = P ⊙ (P̄ − ρ), ρ_r = Σ_i P[r, i] P̄[r, i] (softmax backward) and ∂logit/∂s_i = 2(a_r − s_i)/t,
        the gradient is ∂s_i = (2/t) Σ_r Λ[r, i] (a_r − s_i) plus ∂a_r = (2/t) Σ_i Λ[r, i] s_i (rows of Λ
        sum to zero) at token order[r].
        """
        pz, psz, ps, pt_al, pt_l = products
        upstream_right = _per_slice(upstream_right)
        rho = _rowdot(upstream_left, pz)  # (B, H, c, n)
        grad_ranked = _rowdot(upstream_left, psz) - rho * ps  # Σ_i P Ā s_i − ρ (Ps), low-rank part
        if full_rank is not None:
            rho = rho + full_rank["rho"]
            grad_ranked = grad_ranked + full_rank["by_values"] - full_rank["rho"] * ps
        rho_terms = self.apply_t_thin(torch.stack([rho * self.ranked, rho], dim=-1))  # Pᵀ(ρ a), Pᵀ ρ
        lambda_a = _rowdot(upstream_right, pt_al) - rho_terms[..., 0]  # Σ_r Λ[r, i] a_r
        lambda_1 = _rowdot(upstream_right, pt_l) - rho_terms[..., 1]  # Σ_r Λ[r, i]
        if full_rank is not None:
            lambda_a = lambda_a + full_rank["t_ranked"]
            lambda_1 = lambda_1 + full_rank["t_ones"]
        grad = (lambda_a - self.values * lambda_1).scatter_add(-1, self.order, grad_ranked)
        return grad * (2.0 / self.sort_temperature)


def _rowdot(x: Tensor, y: Tensor) -> Tensor:
    """Σ_p x[..., p] y[..., p] without a temporary of x's size; x may broadcast over y's slice axis."""
    return torch.einsum("...p,...p->...", x.expand_as(y), y)


def _per_slice(x: Tensor) -> Tensor:
    """(B, H, n, p) shared by all slices -> (B, H, 1, n, p); (B, H, c, n, p) unchanged."""
    return x[:, :, None] if x.dim() == 4 else x
