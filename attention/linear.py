"""Linear attention with φ(x) = elu(x) + 1 (Katharopoulos et al. 2020, "Transformers are RNNs").

The simplest positive feature map (D = d); the attention itself is the shared linear core.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .linear_attention import ChunkSize, Eps, FeatureMap, LinearAttentionCore
from .registry import register_attention


class EluFeatureMap(FeatureMap):
    def forward(self, x: Tensor) -> Tensor:
        return F.elu(x) + 1.0  # (B, H, N, d), > 0


@register_attention("linear")
class LinearAttention(LinearAttentionCore):
    def __init__(self, num_heads: int, head_dim: int, *, chunk_size: ChunkSize = 64, eps: Eps = 1.0e-6):
        super().__init__(num_heads, head_dim, EluFeatureMap(), chunk_size=chunk_size, eps=eps)
