"""The shared multi-head wrapper: Q/K/V/O projections around any registered attention core.

Backbones never talk to a core directly; they build `MultiHeadAttention(dim, heads, attention=...)`
where `attention` is a registry name, an `AttentionSpec` (name + options) or an `AttentionCore`
subclass. Each head works in `head_dim` dimensions (default dim / heads); the projections map the
model width to the inner width heads × head_dim and back, as in vit-pytorch and the ESPFormer code
(64 per head whatever the width; for `esp` the head dimension is also the number of slices). Whether the
block is causal or cross-attention is stated here, at construction, so an incapable mechanism is refused
before training starts.

Decoding: `step(x, state)` runs the newest positions only. For causal self-attention the state is the
core's (a KV cache or a recurrent state, see `AttentionCore.step`); for cross-attention it is the
projected keys and values of the fixed context, computed at the first step and reused.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lab.registry import ConfigError

from .base import AttentionCore
from .registry import ATTENTIONS, AttentionSpec, build_attention

AttentionLike = str | AttentionSpec | type[AttentionCore]


def make_core(attention: AttentionLike, *, num_heads: int, head_dim: int, causal: bool = False,
              cross: bool = False, **options: Any) -> AttentionCore:
    """Build a core from a name, a spec or a class (timm-style: a class bypasses the registry)."""
    if isinstance(attention, type):
        name = getattr(attention, "registry_name", None)
        if name is None:
            return attention(num_heads=num_heads, head_dim=head_dim, **options)
        attention = name
    if isinstance(attention, AttentionSpec):
        options = {**attention.options, **options}
        attention = attention.name
    return build_attention(ATTENTIONS.canonical(attention), num_heads=num_heads, head_dim=head_dim,
                           causal=causal, cross=cross, **options)


def check_head_split(dim: int, num_heads: int, head_dim: int | None, where: str = "") -> None:
    """The width rule of every multi-head layer: at least one head, and `dim` splits evenly into `num_heads`
    unless `head_dim` (>= 1) is set. `where` prefixes the option names in the error (`"model."`)."""
    if num_heads < 1:
        raise ConfigError(f"{where}num_heads must be >= 1, got {num_heads}")
    if head_dim is None and dim % num_heads:
        raise ConfigError(f"{where}dim {dim} is not divisible by {where}num_heads {num_heads}; set {where}head_dim")
    if head_dim is not None and head_dim < 1:
        raise ConfigError(f"{where}head_dim must be a positive integer or null (dim / num_heads), got {head_dim}")


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attention: AttentionLike = "softmax", *,
                 context_dim: int | None = None, causal: bool = False, cross: bool = False,
                 qkv_bias: bool = False, head_dim: int | None = None):
        super().__init__()
        check_head_split(dim, num_heads, head_dim)
        self.num_heads, self.causal, self.cross = num_heads, causal, cross
        self.head_dim = dim // num_heads if head_dim is None else head_dim
        self.core = make_core(attention, num_heads=num_heads, head_dim=self.head_dim,
                              causal=causal, cross=cross)
        inner = num_heads * self.head_dim
        self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_kv = nn.Linear(context_dim or dim, 2 * inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)

    def _project(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        context = x if context is None else context
        q = self._heads(self.to_q(x))  # (B, H, Nq, D)
        k, v = (self._heads(t) for t in self.to_kv(context).chunk(2, dim=-1))  # (B, H, Nk, D) each
        return q, k, v

    def forward(self, x: Tensor, context: Tensor | None = None, key_padding_mask: Tensor | None = None,
                query_padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, Nq, dim); context: (B, Nk, context_dim) for cross-attention, else None.

        key_padding_mask: (B, Nk) True = padding. For self-attention it also marks the padded queries.
        """
        if context is not None and not self.cross:
            raise ValueError("this block was built for self-attention; build it with cross=True")
        if context is None and key_padding_mask is not None and query_padding_mask is None:
            query_padding_mask = key_padding_mask
        q, k, v = self._project(x, context)
        if context is not None and key_padding_mask is not None and query_padding_mask is None:
            query_padding_mask = no_padding(q)  # the context's padding says nothing about the queries
        out = self.core(q, k, v, key_padding_mask=key_padding_mask, causal=self.causal,
                        query_padding_mask=query_padding_mask)  # (B, H, Nq, D)
        return self._merge(out)

    def _merge(self, out: Tensor) -> Tensor:
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))  # (B, Nq, H·D) -> (B, Nq, dim)

    def step(self, x: Tensor, state=None, context: Tensor | None = None,
             key_padding_mask: Tensor | None = None) -> tuple[Tensor, object]:
        """Attention of the newest positions x (B, T, dim) for incremental decoding -> (out (B, T, dim), state).

        Causal self-attention: `state` summarises the earlier positions (None at the first step).
        Cross-attention: `context` (B, M, context_dim) and its `key_padding_mask` (B, M) are needed at the
        first step only; the state keeps their projected keys and values.
        """
        q = self._heads(self.to_q(x))  # (B, H, T, D)
        if self.cross:
            if state is None:
                state = tuple(self._heads(t) for t in self.to_kv(context).chunk(2, dim=-1)) + (key_padding_mask,)
            k, v, context_mask = state
            query_mask = None if context_mask is None else no_padding(q)
            out = self.core(q, k, v, key_padding_mask=context_mask, query_padding_mask=query_mask)
            return self._merge(out), state
        if not self.causal:
            raise ValueError("incremental decoding needs causal self-attention or cross-attention")
        k, v = (self._heads(t) for t in self.to_kv(x).chunk(2, dim=-1))  # (B, H, T, D) each
        out, state = self.core.step(q, k, v, state, key_padding_mask=key_padding_mask)
        return self._merge(out), state

    def attention_maps(self, x: Tensor, context: Tensor | None = None,
                       key_padding_mask: Tensor | None = None) -> Tensor:
        """(B, H, Nq, Nk) attention of this block on input x, for plots and diagnostics."""
        q, k, _ = self._project(x, context)
        query_mask = key_padding_mask if context is None else None
        return self.core.attention_matrix(q, k, key_padding_mask=key_padding_mask, causal=self.causal,
                                          query_padding_mask=query_mask)


def no_padding(q: Tensor) -> Tensor:
    """An all-valid query padding mask (B, Nq) for queries q (B, H, Nq, D)."""
    return torch.zeros(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)
