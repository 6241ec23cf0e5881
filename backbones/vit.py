"""Vision Transformer (Dosovitskiy et al. 2021) with the attention chosen by name.

Conv patch embedding, learned positions, an optional CLS token (prepended when the pooling reads it),
pre-LN blocks, pooling from the registry, linear head. CIFAR preset: patch 4 -> 64 tokens.

With `mlp_ratio=4`, `qkv_bias=True`, `norm_eps=1e-6` and CLS pooling (the default pooling) it is exactly
torchvision's `VisionTransformer` / DeiT's ViT (ImageNet presets `imagenet_vit_s16`, `imagenet_vit_b16`), so
their weights load into it (`backbones.torchvision_vit`). Defaults are the lab's CIFAR setting.
`head_dim` (default dim / num_heads) sets each head's width independently of `dim` (64 in the original ViT).

Vision papers' extras around the mechanism (`backbones/patch_attention.py`; all off by default, so the model is the
plain ViT): `local_conv=K` (a depthwise K x K convolution of the patches' values added to their attention output),
`key_pos` (a learnable positional encoding added to the keys), `special_tokens_attention=softmax` (the class token
attends with that mechanism over all tokens, the patches with the one under study over the patches), as in
LOTFormer's DeiT code (`experiment=lotformer_deit`).
"""
from __future__ import annotations

from functools import partial
from typing import Annotated

import torch
from torch import Tensor, nn

from attention import AttentionSpec
from attention.pooling import PoolingSpec, build_pooling
from lab.registry import Above, AtLeast, ConfigError

from . import register_backbone
from .blocks import Encoder
from .patch_attention import PatchGridAttention


@register_backbone("vit")
class ViT(nn.Module):
    def __init__(self, *, num_classes: int, image_size: int, in_channels: int, attention: AttentionSpec,
                 pooling: PoolingSpec, patch_size: int = 4, dim: int = 192, depth: int = 6,
                 num_heads: int = 4, head_dim: int | None = None, mlp_ratio: float = 2.0, dropout: float = 0.0,
                 qkv_bias: bool = False, norm_eps: Annotated[float, Above(0.0)] = 1e-5,
                 local_conv: Annotated[int, AtLeast(0)] = 0, key_pos: bool = False, special_tokens_attention: str | None = None):
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"image_size {image_size} is not divisible by model.patch_size {patch_size}")
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        num_patches = (image_size // patch_size) ** 2
        self.pool = build_pooling(pooling if pooling.name else PoolingSpec("cls", pooling.options), dim=dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if self.pool.needs_cls_token else None
        num_special = 1 if self.cls_token is not None else 0
        self.pos_embed = nn.Parameter(torch.randn(1, num_special + num_patches, dim) * 0.02)
        if local_conv % 2 == 0 and local_conv:
            raise ConfigError(f"model.local_conv must be odd (a kernel centred on its patch) or 0, got {local_conv}")
        if special_tokens_attention is not None and not num_special:
            raise ConfigError(f"model.special_tokens_attention={special_tokens_attention} sets how the class token "
                              f"attends, but pooling '{pooling.name}' has no class token: use pooling=cls")
        grid_attention = partial(PatchGridAttention, grid=image_size // patch_size, num_special=num_special,
                                 local_conv=local_conv, key_pos=key_pos,
                                 special_tokens_attention=special_tokens_attention)
        self.encoder = Encoder(dim, depth, num_heads, attention, mlp_ratio=mlp_ratio, dropout=dropout,
                               qkv_bias=qkv_bias, norm_eps=norm_eps, head_dim=head_dim,
                               attention_module=grid_attention)
        self.head = nn.Linear(self.pool.output_dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, C, H, W) normalised -> logits (B, num_classes)."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, dim)
        x = self.encoder(x + self.pos_embed)
        return self.head(self.pool(x))
