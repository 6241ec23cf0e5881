"""Softmax (dot-product) attention, Vaswani et al. 2017: the baseline every mechanism is compared to.

Fast path: `F.scaled_dot_product_attention` (fused kernels, O(N) memory where the backend allows).
`attention_matrix` is the readable manual form softmax(q kᵀ / √d) beside it. Decoding (`step`) keeps a
KV cache: the keys and values of every earlier token, so a step costs O(prefix) and the cache grows.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import AttentionCore, allowed_keys, zero_padded_rows
from .registry import register_attention


class KVCache(NamedTuple):
    """The keys and values of every token decoded so far (grows by the new tokens at each step)."""

    k: Tensor  # (B, H, L, D)
    v: Tensor  # (B, H, L, D)
    padding: Tensor  # (B, L) True = padding


@register_attention("softmax")
class SoftmaxAttention(AttentionCore):
    supports_causal = True
    supports_cross = True
    complexity = "quadratic"
    compute_in_float32 = False  # fused kernels are stable in bf16; no iterative normalisation

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__(num_heads, head_dim)

    def _attend(self, q, k, v, key_padding_mask, query_padding_mask, causal) -> Tensor:
        if key_padding_mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        allowed = allowed_keys(key_padding_mask, causal, q.shape[2], k.shape[2], q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)

    def _attention_matrix(self, q, k, key_padding_mask, query_padding_mask, causal) -> Tensor:
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, Nq, Nk)
        allowed = allowed_keys(key_padding_mask, causal, q.shape[2], k.shape[2], q.device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=-1)

    def step(self, q, k, v, state: KVCache | None = None, key_padding_mask=None) -> tuple[Tensor, KVCache]:
        new = q.shape[2]
        padding = key_padding_mask if key_padding_mask is not None else q.new_zeros(q.shape[0], new, dtype=torch.bool)
        if state is not None:
            k, v = torch.cat([state.k, k], dim=2), torch.cat([state.v, v], dim=2)  # (B, H, L + T, D)
            padding = torch.cat([state.padding, padding], dim=1)  # (B, L + T)
        positions = torch.arange(k.shape[2], device=q.device)
        causal = positions[None, :] <= positions[-new:, None]  # (T, L + T): new token t sees keys up to itself
        allowed = causal & ~padding[:, None, None, :]  # (B, 1, T, L + T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return zero_padded_rows(out, key_padding_mask), KVCache(k, v, padding)
