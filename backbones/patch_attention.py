"""Self-attention over a ViT's tokens with the pieces vision papers add around the mechanism (issue 16).

LOTFormer's ImageNet code (its DeiT and Swin models, reference/lotformer_luna.md §1.3) surrounds its attention
with three things the plain block lacks; here each is an option of the ViT (`model.*`), off by default:

* `local_conv=K`: a depthwise K x K convolution of the patches' values over the patch grid, added to the patches'
  attention output (K odd; one kernel per head dimension, shared by the heads, with a bias; the special tokens get
  none). It gives linear attention the local detail a low-rank plan blurs (as in FLatten/PolaFormer).
* `key_pos`: a learnable positional encoding added to the keys after their projection, one vector per token and
  head dimension, zero at initialisation (so the model starts as the plain one).
* `special_tokens_attention=<mechanism>`: the special tokens' queries (the class token) attend over all tokens
  with that mechanism (DeiT's code: `softmax`), while the patches' queries attend over the patches only with the
  mechanism under study.

The cores stay pure: this module, built by the ViT (which knows the grid), splits the queries, adds the local
branch and keeps everything else of `MultiHeadAttention` (projections, names, so converted weights still load).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from attention.multihead import AttentionLike, MultiHeadAttention, make_core
from lab.registry import ConfigError


class PatchGridAttention(MultiHeadAttention):
    def __init__(self, dim: int, num_heads: int, attention: AttentionLike = "softmax", *, grid: int,
                 num_special: int, local_conv: int = 0, key_pos: bool = False,
                 special_tokens_attention: str | None = None, **options):
        """grid: patches per side (the tokens after the `num_special` leading ones form a grid x grid image)."""
        super().__init__(dim, num_heads, attention, **options)
        self.grid, self.num_special = grid, num_special
        self.special_core = None
        if special_tokens_attention is not None:
            try:
                self.special_core = make_core(special_tokens_attention, num_heads=num_heads, head_dim=self.head_dim,
                                              cross=True)  # S queries over all N keys
            except ConfigError as error:
                raise ConfigError(f"model.special_tokens_attention: {error}") from None
        self.local_conv = None if not local_conv else nn.Conv2d(
            self.head_dim, self.head_dim, local_conv, padding=local_conv // 2, groups=self.head_dim)
        tokens = num_special + grid * grid
        self.key_pos = nn.Parameter(torch.zeros(1, num_heads, tokens, self.head_dim)) if key_pos else None

    def _project(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = super()._project(x, context)  # (B, H, N, D) each
        return q, (k if self.key_pos is None else k + self.key_pos), v

    def forward(self, x: Tensor, context: Tensor | None = None, key_padding_mask: Tensor | None = None,
                query_padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, S + grid², dim), the special tokens first -> (B, S + grid², dim). A ViT has no padding."""
        if context is not None or key_padding_mask is not None or query_padding_mask is not None:
            raise ValueError("PatchGridAttention is a ViT's self-attention: no context, no padding")
        if self.special_core is None and self.local_conv is None:
            return super().forward(x)
        s = self.num_special
        q, k, v = self._project(x, None)  # (B, H, N, D) each
        if self.special_core is None:
            out = self.core(q, k, v)  # (B, H, N, D)
        else:
            special = self.special_core(q[:, :, :s], k, v)  # (B, H, S, D): over every token
            patches = self.core(q[:, :, s:], k[:, :, s:], v[:, :, s:])  # (B, H, P, D): over the patches only
            out = torch.cat([special, patches], dim=2)
        if self.local_conv is not None:
            out = torch.cat([out[:, :, :s], out[:, :, s:] + self.local_branch(v[:, :, s:])], dim=2)
        return self._merge(out)

    def local_branch(self, v: Tensor) -> Tensor:
        """The depthwise convolution of the patches' values v (B, H, P, D) over the grid -> (B, H, P, D)."""
        b, h, p, d = v.shape
        image = v.reshape(b * h, self.grid, self.grid, d).permute(0, 3, 1, 2)  # (B·H, D, grid, grid)
        return self.local_conv(image).permute(0, 2, 3, 1).reshape(b, h, p, d)

    def attention_maps(self, x: Tensor, context: Tensor | None = None,
                       key_padding_mask: Tensor | None = None) -> Tensor:
        """(B, H, N, N): the attention part only (the local branch is not a weighting of the tokens); with
        `special_tokens_attention`, the patches' rows hold zeros in the special tokens' columns."""
        if self.special_core is None:
            return super().attention_maps(x)
        s = self.num_special
        q, k, _ = self._project(x, None)
        special = self.special_core.attention_matrix(q[:, :, :s], k)  # (B, H, S, N)
        patches = self.core.attention_matrix(q[:, :, s:], k[:, :, s:])  # (B, H, P, P)
        patches = torch.cat([patches.new_zeros(*patches.shape[:3], s), patches], dim=-1)  # (B, H, P, N)
        return torch.cat([special, patches], dim=2)
