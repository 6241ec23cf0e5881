"""The pooling interface and registry: a set of vectors (B, N, C) -> one vector (B, C_out).

    pool = build_pooling("mean", dim=C)
    z = pool(x, padding_mask)        # x: (B, N, C), padding_mask: (B, N) True = padding -> (B, pool.output_dim)

A pooling with `needs_cls_token = True` reads a token the backbone prepends (position 0).
Modules may also contribute auxiliary losses and an after-step hook (see `lab/hooks.py`).
"""
from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from lab.registry import Registry
from lab.registry import Spec as PoolingSpec  # which pooling and its options; name None: the backbone's default

POOLINGS = Registry("pooling")
register_pooling = POOLINGS.register


class Pooling(nn.Module):
    needs_cls_token: ClassVar[bool] = False

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.output_dim = dim

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError


def list_poolings(pattern: str = "*") -> list[str]:
    return POOLINGS.names(pattern)


def build_pooling(spec: str | PoolingSpec, *, dim: int, **options) -> Pooling:
    """Build a pooling from a name or a spec for inputs of width `dim`."""
    if isinstance(spec, PoolingSpec):
        options = {**spec.options, **options}
        spec = spec.name
    return POOLINGS.build(POOLINGS.canonical(spec), dim=dim, **options)
