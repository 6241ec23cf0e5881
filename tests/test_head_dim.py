"""`model.head_dim`: every backbone with every mechanism runs with a head width independent of the model
width (inner width heads × head_dim); for esp the head dimension is the number of slices."""
from __future__ import annotations

import pytest
import torch

from attention import AttentionSpec, MultiHeadAttention, get_attention, list_attentions
from attention.pooling import PoolingSpec
from backbones import build_backbone, list_backbones
from lab.registry import ConfigError

DIM, HEADS, HEAD_DIM = 16, 2, 12  # inner width 24 != 16 = dim
MASK = torch.arange(9)[None] >= torch.tensor([[9], [5]])  # (2, 9) True = padding
SETTINGS = {  # backbone -> (data shapes and small options, example inputs, output shape)
    "vit": (dict(num_classes=3, pooling=PoolingSpec(), image_size=8, in_channels=3, patch_size=4, depth=1),
            lambda: (torch.randn(2, 3, 8, 8),), (2, 3)),
    "point_transformer": (dict(num_classes=3, pooling=PoolingSpec(), in_channels=3, depth=1, neighbours=4, num_tokens=6, head_hidden=8),
                          lambda: (torch.rand(2, 10, 3),), (2, 3)),
    "set_transformer": (dict(num_classes=3, pooling=PoolingSpec(), in_channels=3, depth=1, num_inducing=3),
                        lambda: (torch.rand(2, 10, 3),), (2, 3)),
    "sequence_encoder": (dict(num_classes=3, pooling=PoolingSpec(), vocab_size=7, max_length=9, depth=1),
                         lambda: (torch.randint(0, 7, (2, 9)), MASK), (2, 3)),
    "dual_encoder": (dict(num_classes=3, pooling=PoolingSpec(), vocab_size=7, max_length=9, depth=1),
                     lambda: (torch.randint(0, 7, (2, 9)), MASK, torch.randint(0, 7, (2, 9)), MASK.flip(0)), (2, 3)),
    "set_pooler": (dict(num_classes=3, pooling=PoolingSpec(), input_dim=5, depth=1), lambda: (torch.randn(2, 9, 5), MASK), (2, 3)),
    "seq2seq": (dict(vocab_size=7, encoder_depth=1, decoder_depth=1),
                lambda: (torch.randint(0, 7, (2, 9)), torch.randint(0, 7, (2, 4)), MASK), (2, 4, 7)),
}


def test_every_backbone_is_covered():
    assert sorted(SETTINGS) == sorted(list_backbones())


@pytest.mark.parametrize("attention", list_attentions())
@pytest.mark.parametrize("backbone", sorted(SETTINGS))
def test_head_dim_sets_the_head_width_of_every_block(backbone, attention):
    options, inputs, output_shape = SETTINGS[backbone]
    build = lambda: build_backbone(backbone, attention=AttentionSpec(attention), dim=DIM,  # noqa: E731
                                   num_heads=HEADS, head_dim=HEAD_DIM, **options)
    if backbone == "set_transformer" and not get_attention(attention).supports_cross:
        with pytest.raises(ConfigError, match="cross"):
            build()
        return
    torch.manual_seed(0)
    model = build()
    blocks = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert blocks and all(b.head_dim == HEAD_DIM and b.core.head_dim == HEAD_DIM for b in blocks)
    assert all(b.to_q.out_features == HEADS * HEAD_DIM and b.to_out.in_features == HEADS * HEAD_DIM for b in blocks)
    out = model(*inputs())
    assert out.shape == output_shape and torch.isfinite(out).all()
    out.sum().backward()
    assert all(b.to_q.weight.grad is not None for b in blocks)


def test_esp_slices_are_the_head_dimensions():
    block = MultiHeadAttention(DIM, HEADS, "esp", head_dim=HEAD_DIM)
    q, k, _ = block._project(torch.randn(2, 7, DIM), None)
    assert block.core.slice_weights(q, k).shape == (2, HEADS, HEAD_DIM)


def test_default_head_dim_is_dim_over_heads_and_bad_values_are_refused():
    assert MultiHeadAttention(DIM, 4).head_dim == 4
    with pytest.raises(ConfigError, match="not divisible"):
        MultiHeadAttention(18, 4)
    assert MultiHeadAttention(18, 4, head_dim=8).to_q.out_features == 32
    with pytest.raises(ConfigError, match="head_dim must be a positive integer"):
        MultiHeadAttention(DIM, 4, head_dim=0)
