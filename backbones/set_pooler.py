"""Set classifier over precomputed per-element features (e.g. per-residue ESM-2 embeddings).

features (B, N, C) + padding mask -> optional linear projection to `dim` -> optional `depth` pre-LN
blocks with the attention chosen by name -> pooling from the registry (default: masked mean) ->
linear head. With the defaults (no projection, depth 0) it is "pooling + linear probe", the setting
in which the constrained sliced-Wasserstein embedding paper compares poolings of frozen ESM-2 features.
`head_dim` (default width / num_heads) sets each head's width in the blocks.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from attention import AttentionSpec
from attention.pooling import PoolingSpec, build_pooling
from lab.registry import ConfigError

from . import register_backbone
from .blocks import Encoder
from .sequence_encoder import pooling_or_default, prepend_cls


@register_backbone("set_pooler")
class SetPooler(nn.Module):
    def __init__(self, *, num_classes: int, input_dim: int, attention: AttentionSpec, pooling: PoolingSpec,
                 dim: int | None = None, depth: int = 0, num_heads: int = 4, head_dim: int | None = None,
                 mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        width = dim or input_dim
        self.project = nn.Linear(input_dim, width) if dim else nn.Identity()
        self.encoder = (Encoder(width, depth, num_heads, attention, mlp_ratio=mlp_ratio, dropout=dropout,
                                head_dim=head_dim) if depth else None)
        self.pool = build_pooling(pooling_or_default(pooling), dim=width)
        if self.pool.needs_cls_token and self.encoder is None:
            raise ConfigError(f"pooling '{pooling.name}' reads a CLS token, which needs encoder blocks: "
                              "set model.depth >= 1")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if self.pool.needs_cls_token else None
        self.head = nn.Linear(self.pool.output_dim, num_classes)

    def forward(self, features: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """features: (B, N, input_dim); padding_mask: (B, N) bool, True = padding -> logits (B, num_classes)."""
        x = self.project(features)  # (B, N, width)
        if self.cls_token is not None:
            x, padding_mask = prepend_cls(x, padding_mask, self.cls_token)
        if self.encoder is not None:
            x = self.encoder(x, padding_mask)
        return self.head(self.pool(x, padding_mask))
