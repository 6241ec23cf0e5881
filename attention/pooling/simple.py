"""Parameter-free set poolings: masked mean, masked max, their concatenation, and the CLS token."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Pooling, register_pooling


def valid_weights(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """(B, N, 1) float, 1 at valid elements and 0 at padding."""
    if padding_mask is None:
        return x.new_ones(x.shape[0], x.shape[1], 1)
    return (~padding_mask).unsqueeze(-1).to(x.dtype)


def masked_mean(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    weights = valid_weights(x, padding_mask)  # (B, N, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, C)


def masked_max(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    if padding_mask is not None:
        x = x.masked_fill(padding_mask.unsqueeze(-1), torch.finfo(x.dtype).min)
    return x.max(dim=1).values  # (B, C)


@register_pooling("mean")
class MeanPooling(Pooling):
    def forward(self, x, padding_mask=None):
        return masked_mean(x, padding_mask)


@register_pooling("max")
class MaxPooling(Pooling):
    def forward(self, x, padding_mask=None):
        return masked_max(x, padding_mask)


@register_pooling("max_mean")
class MaxMeanPooling(Pooling):
    """[max ; mean] as in point-cloud transformers (PCT): output width 2C."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.output_dim = 2 * dim

    def forward(self, x, padding_mask=None):
        return torch.cat([masked_max(x, padding_mask), masked_mean(x, padding_mask)], dim=-1)


@register_pooling("cls")
class ClsPooling(Pooling):
    """The output at position 0, where the backbone put a learned CLS token."""

    needs_cls_token = True

    def forward(self, x, padding_mask=None):
        return x[:, 0]
