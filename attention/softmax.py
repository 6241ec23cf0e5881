"""Softmax (dot-product) attention, Vaswani et al. 2017: the baseline every mechanism is compared to.

Fast path: `F.scaled_dot_product_attention` (fused kernels, O(N) memory where the backend allows).
`attention_matrix` is the readable manual form softmax(q kᵀ / √d) beside it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import AttentionCore, allowed_keys
from .registry import register_attention


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
