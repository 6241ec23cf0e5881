"""Token-sequence classifier: embeddings + learned positions, pre-LN blocks, masked pooling, a head.

Generic over vocabularies (amino acids, SentencePiece pieces, bytes, ListOps symbols, pixel
intensities). The attention is chosen by name (`attention=`), the pooling from the registry (default:
masked mean; a pooling that reads a CLS token gets one prepended). `head_dim` (default dim / num_heads)
sets each head's width. The head is linear, or with `head_hidden > 0` the Long Range Arena harness's
two-layer MLP (Linear, ReLU, Linear). Token embeddings and learned positions start random with
std `embedding_std` (0.02, the LRA harness's), or the positions with `position_init: grid_sincos` from a 2-D
sine-cosine code of a square image's pixels at that std (still learned).
Padding never influences the valid positions' outputs, so a batch
padded to its longest sequence gives every sequence the logits it would get alone. `dual_encoder`
(backbones/dual_encoder.py) runs one such encoder over two sequences.
"""
from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import torch
from torch import Tensor, nn

from attention import AttentionSpec
from attention.pooling import PoolingSpec, build_pooling
from lab.registry import Above, ConfigError

from . import register_backbone
from .blocks import Encoder


def pooling_or_default(pooling: PoolingSpec, default: str = "mean") -> PoolingSpec:
    return pooling if pooling.name else PoolingSpec(default, pooling.options)


def prepend_cls(x: Tensor, padding_mask: Tensor | None, cls_token: Tensor) -> tuple[Tensor, Tensor | None]:
    """Put a learned (1, 1, C) token in front of x (B, N, C); the mask gets a valid column in front."""
    x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, C)
    if padding_mask is not None:
        padding_mask = torch.cat([padding_mask.new_zeros(x.shape[0], 1), padding_mask], dim=1)  # (B, 1 + N)
    return x, padding_mask


def classifier_head(in_dim: int, num_classes: int, hidden: int = 0) -> nn.Module:
    """Linear, or Linear -> ReLU -> Linear with `hidden` units."""
    if hidden <= 0:
        return nn.Linear(in_dim, num_classes)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def grid_sincos(length: int, dim: int, std: float) -> Tensor:
    """(length, dim) codes of the pixels of a square image (row-major; `length` a square): for the row and
    for the column, sines and cosines at `dim` / 4 frequencies from 1 to 1/100 per pixel (leftover dims 0),
    scaled so that the entries' standard deviation is `std`. Nearby pixels get similar codes."""
    side = math.isqrt(length)
    if side * side != length or dim < 4:
        raise ConfigError(f"model.position_init=grid_sincos needs a square number of positions (an image's "
                          f"pixels) and dim >= 4, got {length} positions and dim {dim}")
    quarter = dim // 4
    frequencies = 100.0 ** (-torch.arange(quarter) / quarter)  # (Q,)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")  # (S, S) each
    angles = [axis.reshape(-1, 1) * frequencies for axis in (rows, cols)]  # 2 x (length, Q)
    table = torch.cat([wave(a) for a in angles for wave in (torch.sin, torch.cos)], dim=1)  # (length, 4Q)
    table = nn.functional.pad(table, (0, dim - 4 * quarter))  # (length, dim)
    return table * (std / table.std())


@register_backbone("sequence_encoder")
class SequenceEncoder(nn.Module):
    pooled_per_example: ClassVar[int] = 1  # pooled vectors the head reads per example (a dual encoder: 4)

    def __init__(self, *, num_classes: int, vocab_size: int, max_length: int, attention: AttentionSpec,
                 pooling: PoolingSpec, dim: int = 128, depth: int = 2, num_heads: int = 4, head_dim: int | None = None,
                 mlp_ratio: float = 2.0, dropout: float = 0.0, head_hidden: int = 0,
                 position_init: Literal["normal", "grid_sincos"] = "normal",
                 embedding_std: Annotated[float, Above(0)] = 0.02):
        super().__init__()
        self.max_length = max_length
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_length, dim))
        nn.init.normal_(self.token_embed.weight, std=embedding_std)
        with torch.no_grad():
            if position_init == "grid_sincos":
                self.pos_embed.copy_(grid_sincos(max_length, dim, embedding_std))
            else:
                nn.init.normal_(self.pos_embed, std=embedding_std)
        self.pool = build_pooling(pooling_or_default(pooling), dim=dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if self.pool.needs_cls_token else None
        self.dropout = nn.Dropout(dropout)
        self.encoder = Encoder(dim, depth, num_heads, attention, mlp_ratio=mlp_ratio, dropout=dropout,
                               head_dim=head_dim)
        self.head = classifier_head(self.pooled_per_example * self.pool.output_dim, num_classes, head_hidden)

    def forward(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """tokens: (B, N) long; padding_mask: (B, N) bool, True = padding -> logits (B, num_classes)."""
        return self.head(self.encode(tokens, padding_mask))

    def encode(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """tokens: (B, N) long; padding_mask: (B, N) True = padding -> pooled (B, pool.output_dim)."""
        n = tokens.shape[1]
        if n > self.max_length:
            raise ValueError(f"sequences of {n} tokens exceed this model's max_length {self.max_length}")
        x = self.token_embed(tokens) + self.pos_embed[:, :n]  # (B, N, dim)
        if self.cls_token is not None:
            x, padding_mask = prepend_cls(x, padding_mask, self.cls_token)
        x = self.encoder(self.dropout(x), padding_mask)
        return self.pool(x, padding_mask)
