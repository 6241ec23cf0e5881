"""SoftSort kernels for ESP attention (ESPFormer, arXiv 2502.07962): built in few passes, differentiated by hand.

SoftSort (Prillo & Eisenschlos 2020, squared distance) of the values s ∈ R^n of one slice, with
a_1 ≥ … ≥ a_n their order statistics, is P[r, i] = softmax_i(−(a_r − s_i)² / t). We keep it
unnormalised: E[r, i] = exp(−(a_r − s_i)² / t) and P = diag(inv_norm) E, so every product with P is
a matmul with E plus a scaling of thin (n, p) matrices, and P itself is never written out.

Why it is built this way (the cost is memory passes over the (n, n) kernels, not flops):
* the logits are one rank-3 matmul, [a, a², 1] · [2s/t, −1/t, −s²/t]ᵀ = −(a − s)²/t, on values centred
  per slice (float32 cancellation grows with s²/t); padded columns get a −max logit in the same product;
* logits at or below `floor` become exact zeros (threshold, then exp, both in place). `floor` keeps every
  product of two kernel entries and 1/n² a normal float: denormal numbers make CPU matmuls ~100× slower,
  and the dropped mass (< n·e^floor ≈ 1e-13 of a row at n = 1,024 in float32) is far below rounding;
* the row sums come from a trailing column of ones in the first right-hand side (`normalise`).

Padding without sentinels: the valid tokens of a batch item take ranks 0 .. n_valid − 1; padded
columns have zero kernel entries and padded ranks have inv_norm = 0, so they carry no mass.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def negligible_log(dtype: torch.dtype, n: int) -> float:
    """log of the smallest kept kernel entry / slice weight: e^floor · e^floor / n² is still a normal float."""
    return 0.5 * math.log(torch.finfo(dtype).tiny) + math.log(n) + 1.0


def valid_ranks(valid_tokens: Tensor | None, n: int) -> Tensor | None:
    """(B, n) bool, True for ranks 0 .. n_valid − 1 of each batch item (valid_tokens (B, n), True = real)."""
    if valid_tokens is None:
        return None
    counts = valid_tokens.sum(-1, keepdim=True)  # (B, 1)
    return torch.arange(n, device=valid_tokens.device) < counts


class SoftSortKernel:
    """The unnormalised SoftSort kernels of a chunk of slices, (B, H, c, n, n), with what differentiates them.

    values: (B, H, c, n) slice values (padded tokens already zero); valid_tokens / ranks: (B, n) bool or None.
    """

    def __init__(self, values: Tensor, valid_tokens: Tensor | None, ranks: Tensor | None,
                 sort_temperature: float, floor: float, build: bool = True):
        self.sort_temperature = sort_temperature
        valid = None if valid_tokens is None else valid_tokens[:, None, None, :]  # (B, 1, 1, n)
        self.values = self._centre(values, valid)  # (B, H, c, n)
        key = self.values if valid is None else self.values.masked_fill(~valid, -math.inf)
        ranked, self.order = key.sort(dim=-1, descending=True)  # (B, H, c, n) a_r and token of rank r
        self.ranked = ranked if ranks is None else ranked.masked_fill(~ranks[:, None, None, :], 0.0)
        self.rank_mask = None if ranks is None else ranks[:, None, None, :]  # (B, 1, 1, n)
        self.kernel = self._build(valid, floor) if build else None  # (B, H, c, n, n)  E[r, i]; None: hard sort only
        self.inv_norm: Tensor | None = None  # (B, H, c, n), set by `normalise`

    @staticmethod
    def _centre(values: Tensor, valid: Tensor | None) -> Tensor:
        if valid is None:
            return values - values.mean(-1, keepdim=True)
        count = valid.sum(-1, keepdim=True).clamp(min=1)  # (B, 1, 1, 1)
        centred = values - values.sum(-1, keepdim=True) / count  # padded values are zero
        return centred.masked_fill(~valid, 0.0)

    def _build(self, valid: Tensor | None, floor: float) -> Tensor:
        a, s, t = self.ranked, self.values, self.sort_temperature
        left = torch.stack([a, a.square(), torch.ones_like(a)], dim=-1)  # (B, H, c, n, 3)
        right = torch.stack([2.0 * s / t, torch.full_like(s, -1.0 / t), -s.square() / t], dim=-2)  # (.., 3, n)
        if valid is not None:  # padded columns: logit −max, zero after the threshold
            masked = torch.tensor([0.0, 0.0, -torch.finfo(s.dtype).max], dtype=s.dtype, device=s.device)
            right = torch.where(valid[..., None, :], right, masked[:, None])
        shape = a.shape + a.shape[-1:]
        logits = torch.bmm(left.reshape(-1, a.shape[-1], 3), right.reshape(-1, 3, a.shape[-1]))
        if logits.requires_grad:  # the dense (autograd) path
            return F.threshold(logits, floor, -math.inf).exp().view(shape)
        F.threshold(logits, floor, -math.inf, inplace=True)
        return logits.exp_().view(shape)  # (B, H, c, n, n)

    # -- products with P = diag(inv_norm) E --------------------------------------------------------
    def _matmul(self, rhs: Tensor, transpose: bool = False) -> Tensor:
        """E @ rhs (or Eᵀ @ rhs); rhs (B, H, n, p) shared by the slices or (B, H, c, n, p) per slice."""
        kernel = self.kernel.transpose(-1, -2) if transpose else self.kernel
        b, h, c, n, _ = kernel.shape
        if rhs.dim() == 4:  # one right-hand side for all c slices: stack the slices' rows
            assert not transpose
            return torch.bmm(kernel.reshape(b * h, c * n, n), rhs.reshape(b * h, n, -1)).view(b, h, c, n, -1)
        return torch.bmm(kernel.reshape(b * h * c, n, n), rhs.reshape(b * h * c, n, -1)).view(b, h, c, n, -1)

    def normalise(self, rhs_with_ones: Tensor, scaled: bool = True) -> Tensor:
        """P @ X for rhs_with_ones = [X, 1]: its last column gives the row sums. (B, H, c, n, p).

        scaled=False returns E @ X (rows not yet multiplied by inv_norm), for wide X.
        """
        product = self._matmul(rhs_with_ones)
        row_sum = product[..., -1]  # (B, H, c, n), ≥ 1 on valid ranks (the diagonal entry is e^0)
        inv_norm = 1.0 / row_sum
        if self.rank_mask is not None:
            inv_norm = inv_norm.masked_fill(~self.rank_mask, 0.0)
        self.inv_norm = inv_norm
        return product[..., :-1] * inv_norm[..., None] if scaled else product[..., :-1]

    def apply(self, rhs: Tensor) -> Tensor:
        """P @ rhs, (B, H, c, n, p)."""
        return self._matmul(rhs) * self.inv_norm[..., None]

    def apply_t(self, rhs: Tensor) -> Tensor:
        """Pᵀ @ rhs for rhs (B, H, c, n, p) indexed by rank: (B, H, c, n, p) indexed by token."""
        return self._matmul(rhs * self.inv_norm[..., None], transpose=True)

    def normalised(self) -> Tensor:
        """P itself, (B, H, c, n, n): for the dense paths only."""
        return self.kernel * self.inv_norm[..., None]

    # -- backward ---------------------------------------------------------------------------------
    def jacobian_rhs(self, upstream_right: Tensor) -> Tensor:
        """[Z, s⊙Z, s, 1] for an upstream gradient P̄ = L Zᵀ: what `value_gradients` needs P applied to."""
        s = self.values[..., None]  # (B, H, c, n, 1)
        z = _per_slice(upstream_right).expand(*s.shape[:-1], upstream_right.shape[-1])
        return torch.cat([z, s * z, s, torch.ones_like(s)], dim=-1)

    def value_gradients(self, upstream_left: Tensor, upstream_right: Tensor, applied: Tensor,
                        full_rank: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Gradient w.r.t. the slice values of Σ_ri P̄[r, i] P[r, i] for P̄ = L Zᵀ (+ a full-rank part F).

        upstream_left L (B, H, c, n, p) by rank; upstream_right Z (B, H, [c,] n, p) by token;
        applied = P @ [Z, s⊙Z, s] (B, H, c, n, 2p + 1), i.e. `normalise(jacobian_rhs(Z))`;
        full_rank: for F, the n-vectors rho = rowsum(P⊙F), by_values = (P⊙F) s, t_ranked = (P⊙F)ᵀ a,
        t_ones = (P⊙F)ᵀ 1. Returns (gradient by token (B, H, c, n), Pᵀ L (B, H, c, n, p)).

        With Λ = P ⊙ (P̄ − ρ), ρ_r = Σ_i P[r, i] P̄[r, i] (softmax backward) and ∂logit/∂s_i = 2(a_r − s_i)/t:
        ∂s_i = (2/t) Σ_r Λ[r, i] (a_r − s_i), and ∂a_r = (2/t) Σ_i Λ[r, i] s_i (rows of Λ sum to zero),
        which reaches token order[r]. Every sum is a column of one matmul with P or Pᵀ.
        """
        p, upstream_right = upstream_left.shape[-1], _per_slice(upstream_right)
        pz, psz, ps = applied[..., :p], applied[..., p:2 * p], applied[..., 2 * p]
        rho = (upstream_left * pz).sum(-1)  # (B, H, c, n)
        grad_ranked = (upstream_left * psz).sum(-1) - rho * ps  # (t/2) ∂a_r without the full-rank part
        if full_rank is not None:
            rho = rho + full_rank["rho"]
            grad_ranked = grad_ranked + full_rank["by_values"] - full_rank["rho"] * ps
        a, rho_col = self.ranked[..., None], rho[..., None]  # (B, H, c, n, 1)
        sums = self.apply_t(torch.cat([a * upstream_left, upstream_left, rho_col * a, rho_col], dim=-1))
        pt_al, pt_l = sums[..., :p], sums[..., p:2 * p]  # Pᵀ(a⊙L), Pᵀ L   (B, H, c, n, p)
        lambda_a = (upstream_right * pt_al).sum(-1) - sums[..., 2 * p]  # Σ_r Λ[r, i] a_r
        lambda_1 = (upstream_right * pt_l).sum(-1) - sums[..., 2 * p + 1]  # Σ_r Λ[r, i]
        if full_rank is not None:
            lambda_a = lambda_a + full_rank["t_ranked"]
            lambda_1 = lambda_1 + full_rank["t_ones"]
        grad = lambda_a - self.values * lambda_1
        grad = grad.scatter_add(-1, self.order, grad_ranked)
        return grad * (2.0 / self.sort_temperature), pt_l


def _per_slice(x: Tensor) -> Tensor:
    """(B, H, n, p) shared by all slices -> (B, H, 1, n, p); (B, H, c, n, p) unchanged."""
    return x[:, :, None] if x.dim() == 4 else x
