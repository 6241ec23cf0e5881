"""Performer attention, FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with Performers").

Positive orthogonal random features estimate the softmax kernel without bias:

    φ(x) = exp(ωᵀx − ‖x‖²/2) / √m  for each of m rows ω of Ω,   x = q·d^(-1/4) (or k·d^(-1/4)),
    E[φ(x)ᵀφ(y)] = exp(qᵀk / √d).

Ω stacks orthogonal blocks (QR of Gaussian d×d matrices) whose rows get the norms of Gaussian vectors, so
each ω is marginally N(0, I_d) while rows of a block are exactly orthogonal (lower variance). The map
returns log-features; the shared linear core exponentiates them with stabilisers (see linear_attention.py).
Ω is a buffer drawn at construction (saved with the model); with `redraw` it is drawn afresh in every
training forward.
"""
from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import Tensor

from lab.registry import AtLeast

from .linear_attention import ChunkSize, Eps, FeatureMap, LinearAttentionCore
from .registry import register_attention


def orthogonal_gaussian(num_features: int, dim: int, device: torch.device | None = None) -> Tensor:
    """(num_features, dim): blocks of orthogonal rows with Gaussian-vector norms (chi with `dim` dof)."""
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        orthogonal, triangular = torch.linalg.qr(torch.randn(dim, dim, device=device))
        orthogonal = orthogonal * triangular.diagonal().sign()  # sign fix: uniform (Haar), not QR-biased
        blocks.append(orthogonal.T)  # rows orthonormal
    norms = torch.randn(num_features, dim, device=device).norm(dim=-1, keepdim=True)  # (m, 1)
    return torch.cat(blocks)[:num_features] * norms


class FavorFeatureMap(FeatureMap):
    """x (B, H, N, d) -> log φ(x) (B, H, N, m) for positive random features."""

    exponential = True

    def __init__(self, head_dim: int, num_features: int):
        super().__init__()
        self.register_buffer("projection", orthogonal_gaussian(num_features, head_dim))  # Ω (m, d)

    @torch.no_grad()
    def redraw(self) -> None:
        self.projection.copy_(orthogonal_gaussian(*self.projection.shape, device=self.projection.device))

    def forward(self, x: Tensor) -> Tensor:
        num_features, dim = self.projection.shape
        x = x * dim ** -0.25
        offset = x.square().sum(dim=-1, keepdim=True) / 2 + math.log(num_features) / 2  # (B, H, N, 1)
        return x @ self.projection.to(x.dtype).T - offset  # (B, H, N, m)


@register_attention("performer")
class PerformerAttention(LinearAttentionCore):
    def __init__(self, num_heads: int, head_dim: int, *, num_features: Annotated[int, AtLeast(1)] = 128,
                 redraw: bool = False, chunk_size: ChunkSize = 64, eps: Eps = 1.0e-6):
        super().__init__(num_heads, head_dim, FavorFeatureMap(head_dim, num_features), chunk_size=chunk_size, eps=eps)
        self.redraw = redraw

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                causal: bool = False, query_padding_mask: Tensor | None = None) -> Tensor:
        if self.redraw and self.training:  # only here: `step` and `attention_matrix` keep the current draw
            self.feature_map.redraw()
        return super().forward(q, k, v, key_padding_mask, causal, query_padding_mask)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, redraw={self.redraw}"
