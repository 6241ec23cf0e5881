"""Set Transformer (Lee et al. 2019) as in Sinkformer's ModelNet experiment, with the attention chosen by name.

points (B, N, 3 or 6) -> linear embedding -> `depth` ISAB blocks -> PMA (a learned seed attends to the set)
-> linear head, with `head_dropout` before and after PMA (0.5 in the reference ModelNet model). The defaults
suit short CPU runs; Sinkformer's setting is `experiment=modelnet_set_transformer`. `head_dim` (default
dim / num_heads) sets each head's width.

Every attention here is cross-attention: in ISAB the M inducing points attend to the set (M x N), then the
set attends to that summary (N x M), which costs O(N M) instead of O(N^2). A mechanism that cannot do
cross-attention is refused when the model is built. Blocks are pre-LN like the rest of the lab.

Inducing points and the PMA seed start with unit-variance entries, the scale of normalised activations: they
are the residual stream of their MAB, and smaller ones are swamped by the (near-uniform at init) attention
output, so all M summaries start alike and training sits on a loss plateau for tens of steps.

With a doubly-stochastic mechanism (sinkhorn, lotformer ...) PMA's single seed has to send its mass to the
keys as their marginal prescribes (uniformly), so PMA becomes a mean of the value projections whatever the
seed; `pooling=<name>` swaps in a registry pooling instead.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from attention import AttentionSpec, MultiHeadAttention
from attention.pooling import PoolingSpec, build_pooling
from lab.registry import ConfigError

from . import register_backbone
from .blocks import FeedForward


class MAB(nn.Module):
    """Multihead attention block: h = x + Attn(LN(x), LN(y)); out = h + FFN(LN(h))."""

    def __init__(self, dim: int, num_heads: int, attention: AttentionSpec, mlp_ratio: float, dropout: float,
                 head_dim: int | None):
        super().__init__()
        self.norm_query, self.norm_context = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, attention, cross=True, head_dim=head_dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x: (B, Nq, dim) queries, y: (B, Nk, dim) the set they attend to -> (B, Nq, dim)."""
        h = x + self.attn(self.norm_query(x), self.norm_context(y))
        return h + self.ffn(self.norm_ffn(h))


class ISAB(nn.Module):
    """Induced set attention block: ISAB(X) = MAB(X, MAB(I, X)) with M learned inducing points I."""

    def __init__(self, dim: int, num_heads: int, num_inducing: int, attention: AttentionSpec, mlp_ratio: float,
                 dropout: float, head_dim: int | None):
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(1, num_inducing, dim))  # unit entries: see module docstring
        self.summarise = MAB(dim, num_heads, attention, mlp_ratio, dropout, head_dim)
        self.broadcast = MAB(dim, num_heads, attention, mlp_ratio, dropout, head_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, dim) -> (B, N, dim)."""
        summary = self.summarise(self.inducing.expand(x.shape[0], -1, -1), x)  # (B, M, dim)
        return self.broadcast(x, summary)


class PMA(nn.Module):
    """Pooling by multihead attention with one learned seed: (B, N, dim) -> (B, dim)."""

    def __init__(self, dim: int, num_heads: int, attention: AttentionSpec, mlp_ratio: float, dropout: float,
                 head_dim: int | None):
        super().__init__()
        self.seed = nn.Parameter(torch.randn(1, 1, dim))
        self.mab = MAB(dim, num_heads, attention, mlp_ratio, dropout, head_dim)
        self.norm = nn.LayerNorm(dim)
        self.output_dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.mab(self.seed.expand(x.shape[0], -1, -1), x)).squeeze(1)


@register_backbone("set_transformer")
class SetTransformer(nn.Module):
    """`pooling` left unset uses the built-in PMA (same attention); a registry pooling replaces it."""

    def __init__(self, *, num_classes: int, in_channels: int, attention: AttentionSpec, pooling: PoolingSpec,
                 dim: int = 128, depth: int = 2, num_heads: int = 4, head_dim: int | None = None,
                 num_inducing: int = 16, mlp_ratio: float = 2.0, dropout: float = 0.0, head_dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Linear(in_channels, dim)
        self.blocks = nn.Sequential(*(ISAB(dim, num_heads, num_inducing, attention, mlp_ratio, dropout, head_dim)
                                      for _ in range(depth)))
        if pooling.name is None:
            self.pool = PMA(dim, num_heads, attention, mlp_ratio, dropout, head_dim)
        else:
            self.pool = build_pooling(pooling, dim=dim)
            if self.pool.needs_cls_token:
                raise ConfigError(f"pooling '{pooling.name}' reads a CLS token, which set_transformer does not add")
        self.norm = nn.LayerNorm(dim)
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(self.pool.output_dim, num_classes)

    def forward(self, points: Tensor) -> Tensor:
        """points: (B, N, in_channels) -> logits (B, num_classes)."""
        x = self.norm(self.blocks(self.embed(points)))  # (B, N, dim)
        return self.head(self.head_dropout(self.pool(self.head_dropout(x))))
