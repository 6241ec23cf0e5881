"""Pooling by multi-head attention `pma` (Set Transformer, Lee et al., ICML 2019), attention by name.

k learned seed vectors S attend to the set (cross-attention with key padding), then a row-wise
feed-forward layer; the k output rows are concatenated (output_dim = k·dim). Pre-LN form:

    H = S + MHA(S, LN(X));   O = H + FFN(LN(H));   out = flatten(O)

The attention comes from the registry; a mechanism that cannot cross-attend is refused at construction.
"""
from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from attention.multihead import MultiHeadAttention
from lab.registry import AtLeast

from .base import Pooling, register_pooling


@register_pooling("pma")
class PMAPooling(Pooling):
    def __init__(self, dim: int, *, num_seeds: Annotated[int, AtLeast(1)] = 1, num_heads: int = 4,
                 head_dim: int | None = None, attention: str = "softmax"):
        super().__init__(dim)
        self.seeds = nn.Parameter(torch.randn(num_seeds, dim) * dim ** -0.5)  # (k, dim)
        self.norm_set = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, attention, cross=True, head_dim=head_dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))  # Set Transformer's rFF
        self.output_dim = num_seeds * dim

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, N, dim), padding_mask: (B, N) True = padding -> (B, num_seeds * dim)."""
        batch = x.shape[0]
        seeds = self.seeds.unsqueeze(0).expand(batch, -1, -1).to(x.dtype)  # (B, k, dim)
        no_padded_seeds = torch.zeros(batch, seeds.shape[1], dtype=torch.bool, device=x.device)  # (B, k)
        hidden = seeds + self.attn(seeds, self.norm_set(x), key_padding_mask=padding_mask,
                                   query_padding_mask=no_padded_seeds)  # (B, k, dim)
        hidden = hidden + self.ffn(self.norm_ffn(hidden))
        return hidden.flatten(1)  # (B, k * dim)
