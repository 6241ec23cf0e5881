"""Point-cloud Transformer (after PCT, Guo et al. 2021) with the attention chosen by name.

points (B, N, 3 or 6) -> per-point MLP -> neighbourhood embedding -> Transformer blocks over the tokens
-> pooling from the registry (default max+mean, as in PCT) -> MLP head.

Neighbourhood embedding (PCT's "sample and group"): `num_tokens` centres are picked by farthest-point
sampling (all points when `num_tokens` is None or >= N); each centre i gathers its `neighbours` nearest
points j and becomes max_j MLP([f_j - f_i ; f_i]). Attention then runs over all centres.

The defaults are a CPU-sized model for short runs (128 tokens, dim 64, 2 blocks, no head dropout); PCT's setting
(256 tokens, 32 neighbours, dim 128, 4 blocks, head dropout 0.5) is `experiment=modelnet_pct`. `head_dim` (default
dim / num_heads) sets each head's width independently of `dim`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from attention import AttentionSpec
from attention.pooling import PoolingSpec, build_pooling
from lab.registry import ConfigError

from . import register_backbone
from .blocks import Encoder
from .point_ops import farthest_point_sample, gather_points, knn


def linear_norm_act(in_dim: int, out_dim: int) -> nn.Sequential:
    """PCT's LBR (linear, batch norm, ReLU) with LayerNorm + GELU, so no statistics depend on the batch."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.GELU())


class NeighbourhoodEmbedding(nn.Module):
    """Tokens (B, S, dim) at S farthest-point centres: max over k neighbours of MLP([f_j - f_i ; f_i])."""

    def __init__(self, dim: int, neighbours: int, num_tokens: int | None):
        super().__init__()
        self.neighbours, self.num_tokens = neighbours, num_tokens
        self.edge_mlp = nn.Sequential(linear_norm_act(2 * dim, dim), linear_norm_act(dim, dim))

    def forward(self, xyz: Tensor, features: Tensor) -> Tensor:
        """xyz: (B, N, 3) coordinates, features: (B, N, dim) per-point features."""
        n = xyz.shape[1]
        if self.num_tokens is None or self.num_tokens >= n:
            centre_xyz, centre_features = xyz, features
        else:
            centres = farthest_point_sample(xyz.detach(), self.num_tokens)  # (B, S)
            centre_xyz, centre_features = gather_points(xyz, centres), gather_points(features, centres)
        neighbour_index = knn(centre_xyz.detach(), xyz.detach(), min(self.neighbours, n))  # (B, S, k)
        neighbour_features = gather_points(features, neighbour_index)  # (B, S, k, dim)
        centre = centre_features.unsqueeze(2).expand_as(neighbour_features)  # (B, S, k, dim)
        edges = torch.cat([neighbour_features - centre, centre], dim=-1)  # (B, S, k, 2 dim)
        return self.edge_mlp(edges).max(dim=2).values  # (B, S, dim)


@register_backbone("point_transformer", aliases=("pct",))
class PointTransformer(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int, attention: AttentionSpec, pooling: PoolingSpec,
                 dim: int = 64, depth: int = 2, num_heads: int = 4, head_dim: int | None = None,
                 mlp_ratio: float = 2.0, dropout: float = 0.0,
                 neighbours: int = 16, num_tokens: int | None = 128, head_hidden: int = 128,
                 head_dropout: float = 0.0):
        super().__init__()
        if in_channels not in (3, 6):
            raise ValueError(f"in_channels must be 3 (xyz) or 6 (xyz + normals), got {in_channels}")
        self.point_embed = nn.Sequential(linear_norm_act(in_channels, dim), linear_norm_act(dim, dim))
        self.neighbourhood = NeighbourhoodEmbedding(dim, neighbours, num_tokens)
        self.encoder = Encoder(dim, depth, num_heads, attention, mlp_ratio=mlp_ratio, dropout=dropout,
                               head_dim=head_dim)
        self.pool = build_pooling(pooling if pooling.name else PoolingSpec("max_mean", pooling.options), dim=dim)
        if self.pool.needs_cls_token:
            raise ConfigError(f"pooling '{pooling.name}' reads a CLS token, which point_transformer does not add")
        self.head = nn.Sequential(linear_norm_act(self.pool.output_dim, head_hidden), nn.Dropout(head_dropout),
                                  nn.Linear(head_hidden, num_classes))

    def forward(self, points: Tensor) -> Tensor:
        """points: (B, N, in_channels), xyz first -> logits (B, num_classes)."""
        tokens = self.neighbourhood(points[..., :3], self.point_embed(points))  # (B, S, dim)
        return self.head(self.pool(self.encoder(tokens)))
