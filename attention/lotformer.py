"""LOTFormer: doubly stochastic linear attention through a low-rank pivot measure (arXiv 2509.23436).

Attention as a transport plan between the uniform measure μ on the valid queries and ν on the valid
keys, routed through a small learnable pivot measure instead of the n×m entropic OT of Sinkformers.
Per head: r pivots Z (r, D), initialised N(0, 1/D), with masses b = softmax(ℓ / mass_temperature),
ℓ initialised to 0 (b uniform; learnable when `learn_masses`). With q, k scaled by D^-1/2 (Z is not):

    S¹ = q Zᵀ (n×r),   P¹ ∈ Π(μ, b), cost −S¹;      S² = Z kᵀ (r×m),   P² ∈ Π(b, ν), cost −S²,

both by `half_steps` log-domain Sinkhorn half-steps at regularisation `eps`, starting with a row update
(`sinkhorn_solver.sinkhorn_plan`). Gluing through the pivots gives the coupling Γ = P¹ diag(1/b) P²,
and the attention is A = n·Γ (n = valid queries): rank ≤ r; with odd `half_steps` (default 5) P¹ has
exact row sums 1/n and P² exact row sums b, so A is exactly row-stochastic; with an even count P² has
exact column sums 1/m and P¹ exact column sums b, so A has exact column sums n/m (1 for self-attention).

The output Y = n·P¹ (diag(1/b) (P² V)) costs O((n+m)·r·D) time and memory; no n×m tensor is formed
(`attention_matrix` forms it, for tests and plots only). Padding has zero mass in μ / ν, so padded
rows and columns of P¹, P² are exactly 0. Cross-attention works unchanged (columns then sum to n/m).
Not causal: the paper defines no causal variant.

Deliberately unlike the public code: the key mask is a zero marginal (its additive mask is absorbed by
Sinkhorn, a no-op), no 1/r² output scale, Sinkhorn runs with the same masses b it glues with, and there
is no per-iteration convergence check (no host sync).
"""
from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from lab.registry import Above, AtLeast

from .base import AttentionCore
from .registry import register_attention
from .sinkhorn_solver import log_uniform_mass, sinkhorn_plan


@register_attention("lotformer")
class LOTFormerAttention(AttentionCore):
    supports_causal = False
    supports_cross = True
    doubly_stochastic = True
    complexity = "linear"

    def __init__(self, num_heads: int, head_dim: int, *, num_pivots: Annotated[int, AtLeast(1)] = 32,
                 eps: Annotated[float, Above(0)] = 1.0, half_steps: Annotated[int, AtLeast(1)] = 5,
                 learn_masses: bool = True, mass_temperature: Annotated[float, Above(0)] = 0.5):
        super().__init__(num_heads, head_dim)
        self.num_pivots, self.eps, self.half_steps = num_pivots, eps, half_steps
        self.learn_masses, self.mass_temperature = learn_masses, mass_temperature
        self.pivots = nn.Parameter(torch.randn(num_heads, num_pivots, head_dim) * head_dim ** -0.5)  # (H, r, D)
        mass_logits = torch.zeros(num_heads, num_pivots)  # (H, r): uniform masses at init
        if learn_masses:
            self.mass_logits = nn.Parameter(mass_logits)
        else:
            self.register_buffer("mass_logits", mass_logits)

    def log_pivot_masses(self) -> Tensor:
        """log b (H, r): each head's pivot masses, a probability vector."""
        return torch.log_softmax(self.mass_logits / self.mass_temperature, dim=-1)

    def transport_plans(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None,
                        query_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The two plans, for tests and inspection: P¹ (B, H, Nq, r) ∈ Π(μ, b), P² (B, H, r, Nk) ∈ Π(b, ν),
        log b (H, r) and the row total n (B|1, 1, 1, 1): valid queries, 0 if no key is valid. Masks as in
        `forward`; computed in the dtype given (no autocast handling)."""
        query_padding_mask = self._check(q, k, key_padding_mask, query_padding_mask, causal=False)
        query_plan_t, key_plan, log_masses, row_total = self._transport_plans(q, k, key_padding_mask,
                                                                              query_padding_mask)
        return query_plan_t.transpose(-1, -2), key_plan, log_masses, row_total

    def _transport_plans(self, q, k, key_padding_mask, query_padding_mask):
        """P¹ᵀ (B, H, r, Nq), P² (B, H, r, Nk), log b (H, r), row total (B|1, 1, 1, 1).

        P¹ is built transposed so both Sinkhorn problems run on (r, N) tensors: `log_softmax` over the
        long axis of an (N, r) tensor is ~6× slower on CPU than over either axis of an (r, N) one."""
        log_query_mass, query_count = log_uniform_mass(query_padding_mask, q.shape[2], q)  # (B|1, 1, Nq)
        log_key_mass, key_count = log_uniform_mass(key_padding_mask, k.shape[2], k)  # (B|1, 1, Nk)
        log_masses = self.log_pivot_masses().to(q.dtype)  # (H, r), broadcasts against (B, H, r)
        pivots = self.pivots.to(q.dtype) * q.shape[-1] ** -0.5  # (H, r, D), scaled here: r·D, not (n+m)·D work
        query_scores_t = pivots @ q.transpose(-1, -2)  # (B, H, r, Nq) = S¹ᵀ
        key_scores = pivots @ k.transpose(-1, -2)  # (B, H, r, Nk) = S²
        # P¹ starts with its row update over the pivots, i.e. a column update of P¹ᵀ
        query_plan_t = sinkhorn_plan(query_scores_t, log_masses, log_query_mass, self.eps, self.half_steps,
                                     first_update="columns")
        key_plan = sinkhorn_plan(key_scores, log_masses, log_key_mass, self.eps, self.half_steps)
        row_total = query_count * (key_count > 0)  # n valid queries; 0 when no key is valid
        return query_plan_t, key_plan, log_masses, row_total

    def _attend(self, q, k, v, key_padding_mask, query_padding_mask, causal) -> Tensor:
        query_plan_t, key_plan, log_masses, row_total = self._transport_plans(q, k, key_padding_mask,
                                                                              query_padding_mask)
        pivot_values = (key_plan @ v) * (-log_masses).exp().unsqueeze(-1)  # (B, H, r, D) = diag(1/b) P² V
        return row_total * (query_plan_t.transpose(-1, -2) @ pivot_values)  # (B, H, Nq, D)

    def _attention_matrix(self, q, k, key_padding_mask, query_padding_mask, causal) -> Tensor:
        query_plan_t, key_plan, log_masses, row_total = self._transport_plans(q, k, key_padding_mask,
                                                                              query_padding_mask)
        key_given_pivot = key_plan * (-log_masses).exp().unsqueeze(-1)  # (B, H, r, Nk) = diag(1/b) P²
        return row_total * (query_plan_t.transpose(-1, -2) @ key_given_pivot)  # (B, H, Nq, Nk) = n Γ

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_pivots={self.num_pivots}, eps={self.eps}, "
                f"half_steps={self.half_steps}, learn_masses={self.learn_masses}, "
                f"mass_temperature={self.mass_temperature}")
