"""Pre-LN Transformer blocks shared by every backbone; the attention is chosen by name per role.

`attention_module` builds a block's self-attention (default `MultiHeadAttention`): a backbone that wraps the
mechanism with pieces of its own (the ViT's `PatchGridAttention`) passes a subclass, bound to its extra options.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from attention import MultiHeadAttention
from attention.multihead import AttentionLike


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class TransformerBlock(nn.Module):
    """x + Attn(LN(x)) [+ CrossAttn(LN(x), context)] + FFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, attention: AttentionLike = "softmax", *,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, causal: bool = False,
                 cross_attention: AttentionLike | None = None, context_dim: int | None = None,
                 qkv_bias: bool = False, norm_eps: float = 1e-5, head_dim: int | None = None,
                 attention_module: Callable[..., MultiHeadAttention] = MultiHeadAttention):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attention_module(dim, num_heads, attention, causal=causal, qkv_bias=qkv_bias, head_dim=head_dim)
        self.cross = None
        if cross_attention is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=norm_eps)
            self.cross = MultiHeadAttention(dim, num_heads, cross_attention, cross=True,
                                            context_dim=context_dim, qkv_bias=qkv_bias, head_dim=head_dim)
        self.norm_ffn = nn.LayerNorm(dim, eps=norm_eps)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio), dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, context: Tensor | None = None,
                context_padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, N, dim); padding_mask: (B, N) True = padding; context: (B, M, context_dim)."""
        x = x + self.dropout(self.attn(self.norm_attn(x), key_padding_mask=padding_mask))
        if self.cross is not None:
            x = x + self.dropout(self.cross(self.norm_cross(x), context, key_padding_mask=context_padding_mask,
                                            query_padding_mask=padding_mask))
        return x + self.ffn(self.norm_ffn(x))

    def step(self, x: Tensor, state: tuple | None = None, context: Tensor | None = None,
             context_padding_mask: Tensor | None = None) -> tuple[Tensor, tuple]:
        """`forward` for the newest positions x (B, T, dim) of a causal block, for incremental decoding.

        state: (self-attention state, cross-attention state) from the previous step, None at the first.
        """
        self_state, cross_state = state or (None, None)
        attended, self_state = self.attn.step(self.norm_attn(x), self_state)
        x = x + self.dropout(attended)
        if self.cross is not None:
            attended, cross_state = self.cross.step(self.norm_cross(x), cross_state, context, context_padding_mask)
            x = x + self.dropout(attended)
        return x + self.ffn(self.norm_ffn(x)), (self_state, cross_state)


class Encoder(nn.Module):
    """A stack of `depth` self-attention blocks followed by a final LayerNorm."""

    def __init__(self, dim: int, depth: int, num_heads: int, attention: AttentionLike = "softmax", *,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, causal: bool = False, qkv_bias: bool = False,
                 norm_eps: float = 1e-5, head_dim: int | None = None,
                 attention_module: Callable[..., MultiHeadAttention] = MultiHeadAttention):
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, attention, mlp_ratio=mlp_ratio, dropout=dropout, causal=causal,
                             qkv_bias=qkv_bias, norm_eps=norm_eps, head_dim=head_dim,
                             attention_module=attention_module)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, padding_mask)
        return self.norm(x)
