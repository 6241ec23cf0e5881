"""Sinkhorn attention, the Sinkformer baseline: Sander, Ablin, Blondel & Peyré 2022, "Sinkformers:
Transformers with Doubly Stochastic Attention" (AISTATS).

Softmax attention is one Sinkhorn row normalisation of exp(q·k/√d); a Sinkformer runs a few more
half-steps so the attention becomes (close to) doubly stochastic. Here the attention is A = n·P, where
P is the entropic OT plan between the uniform measures on the valid queries (μ, mass 1/n each) and
the valid keys (ν, mass 1/m each), cost −q·k/√d, regularisation `eps`, after `iters` log-domain
half-steps starting with a row update (`sinkhorn_solver.sinkhorn_plan`):

* odd `iters` (default 3): rows of A sum to exactly 1, columns approach n/m as `iters` grows;
  `iters = 1` is exactly softmax(q·k / (ε√d)) over the valid keys;
* even `iters`: columns sum to exactly n/m, rows approximately 1.

Cross-attention (n ≠ m) is the same transport between the two measures, so columns sum to n/m
(1 for self-attention). Padding has zero mass: no plan entry touches a padded token and padded keys
get no gradient. Quadratic: the (B, H, n, m) plan is formed and autograd keeps one such tensor per
half-step. Not causal: a causal mask is not a marginal constraint, and the public Sinkformer code has
no causal variant either.
"""
from __future__ import annotations

from typing import Annotated

from torch import Tensor

from lab.registry import Above, AtLeast

from .base import AttentionCore
from .registry import register_attention
from .sinkhorn_solver import log_uniform_mass, sinkhorn_plan


@register_attention("sinkhorn")
class SinkhornAttention(AttentionCore):
    supports_causal = False
    supports_cross = True
    doubly_stochastic = True
    complexity = "quadratic"

    def __init__(self, num_heads: int, head_dim: int, *, iters: Annotated[int, AtLeast(1)] = 3,
                 eps: Annotated[float, Above(0)] = 1.0):
        super().__init__(num_heads, head_dim)
        self.iters = iters
        self.eps = eps

    def _attend(self, q, k, v, key_padding_mask, query_padding_mask, causal) -> Tensor:
        plan, row_total = self._plan(q, k, key_padding_mask, query_padding_mask)
        return row_total * (plan @ v)  # (B, H, Nq, D)

    def _attention_matrix(self, q, k, key_padding_mask, query_padding_mask, causal) -> Tensor:
        plan, row_total = self._plan(q, k, key_padding_mask, query_padding_mask)
        return row_total * plan  # (B, H, Nq, Nk)

    def _plan(self, q, k, key_padding_mask, query_padding_mask) -> tuple[Tensor, Tensor]:
        """P (B, H, Nq, Nk) and the row total n (B|1, 1, 1, 1): valid queries, 0 if no key is valid."""
        log_query_mass, query_count = log_uniform_mass(query_padding_mask, q.shape[2], q)  # (B|1, 1, Nq)
        log_key_mass, key_count = log_uniform_mass(key_padding_mask, k.shape[2], k)  # (B|1, 1, Nk)
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, H, Nq, Nk) similarity = −cost
        plan = sinkhorn_plan(scores, log_query_mass, log_key_mass, self.eps, self.iters)
        return plan, query_count * (key_count > 0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, iters={self.iters}, eps={self.eps}"
