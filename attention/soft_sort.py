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
        self.sort_temperature, self.values = sort_temperature, values
        key = values if valid_tokens is None else values.masked_fill(~valid_tokens[:, None, None, :], -math.inf)
        ranked, self.order = key.sort(dim=-1, descending=True)  # (B, H, c, n) a_r and the token of rank r
        self.rank_mask = None if ranks is None else ranks[:, None, None, :]  # (B, 1, 1, n)
        self.ranked = ranked if ranks is None else ranked.masked_fill(~self.rank_mask, 0.0)
        self.ones = valid_column(valid_tokens, values)[:, :, None]  # (B, 1|H, 1, n, 1), 1 at valid tokens
        self.kernel = self._build(floor, buffer) if build else None  # (B, H, c, n, n) E[r, i]
        self.inv_norm: Tensor | None = None  # (B, H, c, n), set by `normalise`

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
        c, p = self.order.shape[2], x.shape[-1]
        return x[:, :, None].expand(-1, -1, c, -1, -1).gather(3, self.order[..., None].expand(-1, -1, -1, -1, p))

    def by_token(self, x: Tensor) -> Tensor:
        """Inverse of `by_rank`: x (B, H, c, n, p) by rank -> by token."""
        return torch.zeros_like(x).scatter(3, self.order[..., None].expand_as(x), x)

    # -- products with P = diag(inv_norm) E --------------------------------------------------------
    def _matmul(self, rhs: Tensor, transpose: bool = False) -> Tensor:
        """E @ rhs (or Eᵀ @ rhs); rhs (B, H, n, p) shared by the slices or (B, H, c, n, p) per slice."""
        kernel = self.kernel.transpose(-1, -2) if transpose else self.kernel
        b, h, c, n, _ = kernel.shape
        if rhs.dim() == 4:  # one right-hand side for all c slices: stack the slices' rows
            return torch.bmm(kernel.reshape(b * h, c * n, n), rhs.reshape(b * h, n, -1)).view(b, h, c, n, -1)
        return torch.bmm(kernel.reshape(b * h * c, n, n), rhs.reshape(b * h * c, n, -1)).view(b, h, c, n, -1)

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
        return self._matmul(rhs * self.inv_norm[..., None], transpose=True)

    def normalised(self) -> Tensor:
        """P itself with zero columns at padded tokens, (B, H, c, n, n): for the dense path only."""
        return self.kernel * self.inv_norm[..., None] * self.ones.transpose(-1, -2)

    # -- backward ---------------------------------------------------------------------------------
    def jacobian_products(self, upstream_right: Tensor, known: Tensor | None = None
                          ) -> tuple[Tensor, Tensor, Tensor]:
        """(P Z, P (s⊙Z), P s) for an upstream gradient P̄ = L Zᵀ, from one matmul with [Z, s⊙Z, s].

        upstream_right Z: (B, H, n, p) by token. `known`: the first columns of P Z, kept from the forward
        pass and not recomputed. Uses inv_norm if set (kept from forward), else appends the valid column.
        """
        s = self.values[..., None]  # (B, H, c, n, 1)
        z = _per_slice(upstream_right)
        p, skip = z.shape[-1], 0 if known is None else known.shape[-1]
        columns = [z[..., skip:].expand(*s.shape[:-1], -1), s * z, s]
        if self.inv_norm is None:
            product = self.normalise(torch.cat([*columns, self.ones.expand_as(s)], dim=-1))
        else:
            product = self._matmul(torch.cat(columns, dim=-1)) * self.inv_norm[..., None]
        pz = product[..., :p - skip] if known is None else torch.cat([known, product[..., :p - skip]], dim=-1)
        return pz, product[..., p - skip:2 * p - skip], product[..., -1]

    def value_gradients(self, upstream_left: Tensor, upstream_right: Tensor,
                        products: tuple[Tensor, Tensor, Tensor], full_rank: dict[str, Tensor] | None = None
                        ) -> tuple[Tensor, Tensor]:
        """Gradient w.r.t. the slice values of Σ_ri P̄[r, i] P[r, i] for P̄ = L Zᵀ (+ a full-rank part F).

        upstream_left L (B, H, c, n, p) by rank; upstream_right Z (B, H, n, p) by token; products: the
        (P Z, P (s⊙Z), P s) of `jacobian_products`; full_rank: for F, the n-vectors rho = rowsum(P⊙F),
        by_values = (P⊙F) s, t_ranked = (P⊙F)ᵀ a, t_ones = (P⊙F)ᵀ 1. Returns (gradient by token
        (B, H, c, n), Pᵀ L (B, H, c, n, p)).

        With Λ = P ⊙ (P̄ − ρ), ρ_r = Σ_i P[r, i] P̄[r, i] (softmax backward) and ∂logit/∂s_i = 2(a_r − s_i)/t:
        ∂s_i = (2/t) Σ_r Λ[r, i] (a_r − s_i), and ∂a_r = (2/t) Σ_i Λ[r, i] s_i (rows of Λ sum to zero),
        which reaches token order[r]. Every sum is a column of one matmul with P or Pᵀ.
        """
        pz, psz, ps = products
        p, upstream_right = upstream_left.shape[-1], _per_slice(upstream_right)
        rho = _rowdot(upstream_left, pz)  # (B, H, c, n)
        grad_ranked = _rowdot(upstream_left, psz) - rho * ps  # Σ_i P Ā s_i − ρ (Ps), low-rank part
        if full_rank is not None:
            rho = rho + full_rank["rho"]
            grad_ranked = grad_ranked + full_rank["by_values"] - full_rank["rho"] * ps
        a, rho_col = self.ranked[..., None], rho[..., None]  # (B, H, c, n, 1)
        sums = self.apply_t(torch.cat([a * upstream_left, upstream_left, rho_col * a, rho_col], dim=-1))
        pt_l = sums[..., p:2 * p]  # Pᵀ L   (B, H, c, n, p)
        lambda_a = _rowdot(upstream_right, sums[..., :p]) - sums[..., 2 * p]  # Σ_r Λ[r, i] a_r
        lambda_1 = _rowdot(upstream_right, pt_l) - sums[..., 2 * p + 1]  # Σ_r Λ[r, i]
        if full_rank is not None:
            lambda_a = lambda_a + full_rank["t_ranked"]
            lambda_1 = lambda_1 + full_rank["t_ones"]
        grad = (lambda_a - self.values * lambda_1).scatter_add(-1, self.order, grad_ranked)
        return grad * (2.0 / self.sort_temperature), pt_l


def _rowdot(x: Tensor, y: Tensor) -> Tensor:
    """Σ_p x[..., p] y[..., p] without a temporary of x's size; x may broadcast over y's slice axis."""
    return torch.einsum("...p,...p->...", x.expand_as(y), y)


def _per_slice(x: Tensor) -> Tensor:
    """(B, H, n, p) shared by all slices -> (B, H, 1, n, p); (B, H, c, n, p) unchanged."""
    return x[:, :, None] if x.dim() == 4 else x
