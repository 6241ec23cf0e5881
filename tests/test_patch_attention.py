"""The ViT's paper extras (backbones/patch_attention.py, issue 16): off, they leave the plain model exactly as it
was; on, each equals an independent computation of what LOTFormer's DeiT code does; misuse exits 2 with one line."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import train
from attention import AttentionSpec, MultiHeadAttention
from attention.pooling import PoolingSpec
from backbones import build_backbone
from backbones.patch_attention import PatchGridAttention
from lab.registry import ConfigError

GRID, DIM, HEADS = 4, 16, 2
D = DIM // HEADS


def vit(seed: int = 0, attention: str = "softmax", pooling: str | None = None, **options):
    torch.manual_seed(seed)
    return build_backbone("vit", num_classes=5, image_size=4 * GRID, in_channels=3, attention=AttentionSpec(attention),
                          pooling=PoolingSpec(pooling), patch_size=4, dim=DIM, depth=2, num_heads=HEADS, **options)


def pair(attention: str = "softmax", **options) -> tuple[PatchGridAttention, MultiHeadAttention]:
    """A grid attention with these options and a plain block holding the same weights."""
    torch.manual_seed(0)
    grid = PatchGridAttention(DIM, HEADS, attention, grid=GRID, num_special=1, **options)
    plain = MultiHeadAttention(DIM, HEADS, attention)
    plain.load_state_dict(grid.state_dict(), strict=False)  # the extras' tensors have no counterpart
    return grid, plain


def tokens(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 1 + GRID * GRID, DIM, generator=torch.Generator().manual_seed(1))  # (B, 1 + P, dim)


def test_local_conv_0_reproduces_the_plain_model_exactly():
    images = torch.randn(3, 3, 4 * GRID, 4 * GRID, generator=torch.Generator().manual_seed(2))
    for attention in ("softmax", "lotformer"):
        plain, off = vit(attention=attention), vit(attention=attention, local_conv=0, key_pos=False,
                                                   special_tokens_attention=None)
        assert plain.state_dict().keys() == off.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), off.state_dict().values()))
        assert torch.equal(plain(images), off(images))
    grid, block = pair()  # the grid module with nothing on computes what the plain block computes, bit for bit
    assert torch.equal(grid(tokens()), block(tokens()))
    assert not torch.equal(vit(local_conv=3)(images), vit()(images))  # and the option does change the model


def test_local_conv_adds_a_depthwise_convolution_of_the_patch_values():
    grid, block = pair("lotformer", local_conv=3)
    x = tokens()
    q, k, v = block._project(x, None)  # (B, H, N, D)
    attended = block.core(q, k, v)
    conv = grid.local_conv
    patches = v[:, :, 1:]  # (B, H, P, D)
    reference = torch.stack([  # per head, per channel: a 3 x 3 convolution over the 4 x 4 grid, zero padded
        F.conv2d(patches[:, h].reshape(2, GRID, GRID, D).permute(0, 3, 1, 2), conv.weight, conv.bias, padding=1,
                 groups=D).permute(0, 2, 3, 1).reshape(2, GRID * GRID, D) for h in range(HEADS)], dim=1)
    expected = block._merge(torch.cat([attended[:, :, :1], attended[:, :, 1:] + reference], dim=2))
    assert torch.allclose(grid(x), expected, atol=1e-6)
    assert conv.weight.shape == (D, 1, 3, 3)  # one kernel per head dimension, shared by the heads


def test_key_pos_is_added_to_the_keys_and_starts_at_zero():
    grid, block = pair(key_pos=True)
    x = tokens()
    assert torch.equal(grid(x), block(x))  # zero at initialisation
    with torch.no_grad():
        grid.key_pos.normal_()
    q, k, _ = block._project(x, None)
    dense = torch.softmax(q @ (k + grid.key_pos).transpose(-1, -2) / math.sqrt(D), dim=-1)  # (B, H, N, N)
    assert torch.allclose(grid.attention_maps(x), dense, atol=1e-6)


def test_special_tokens_attend_with_softmax_over_all_tokens_and_patches_with_the_mechanism_over_patches():
    grid, block = pair("lotformer", special_tokens_attention="softmax")
    x = tokens()
    q, k, v = block._project(x, None)
    special = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) / math.sqrt(D), dim=-1) @ v  # (B, H, 1, D)
    patches = block.core(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:])  # LOTFormer among the patches only
    assert torch.allclose(grid(x), block._merge(torch.cat([special, patches], dim=2)), atol=1e-5)
    maps = grid.attention_maps(x)  # (B, H, N, N)
    assert torch.allclose(maps.sum(-1), torch.ones(()), atol=1e-5)
    assert torch.equal(maps[:, :, 1:, 0], torch.zeros_like(maps[:, :, 1:, 0]))  # patches do not read the class token
    assert torch.allclose(maps[:, :, 1:, 1:].sum(-2), torch.ones(()), atol=1e-2)  # doubly stochastic on the patches



def test_extras_work_in_heads_wider_than_dim_over_heads():
    """model.head_dim (issue 17): the local branch, the key positions and the class token's core use the inner
    head width; the model runs and every extra has that width."""
    model = vit(attention="lotformer", head_dim=12, local_conv=3, key_pos=True, special_tokens_attention="softmax")
    attn = model.encoder.blocks[0].attn
    assert attn.head_dim == 12 and attn.to_q.out_features == HEADS * 12
    assert attn.local_conv.weight.shape == (12, 1, 3, 3) and attn.key_pos.shape == (1, HEADS, 1 + GRID * GRID, 12)
    images = torch.randn(2, 3, 4 * GRID, 4 * GRID, generator=torch.Generator().manual_seed(3))
    assert model(images).shape == (2, 5)
    assert torch.allclose(attn.attention_maps(tokens()).sum(-1), torch.ones(()), atol=1e-5)

@pytest.mark.parametrize("options, message", [
    (dict(local_conv=4), "model.local_conv must be odd"),
    (dict(special_tokens_attention="softmax", pooling="mean"), "pooling 'mean' has no class token: use pooling=cls"),
    (dict(special_tokens_attention="esp"), "model.special_tokens_attention: attention 'esp' does not support"),
    (dict(special_tokens_attention="softmx"), "model.special_tokens_attention: unknown attention 'softmx'"),
])
def test_incompatible_options_are_refused_at_construction(options, message):
    pooling = options.pop("pooling", None)
    with pytest.raises(ConfigError, match=message):
        vit(pooling=pooling, **options)


@pytest.mark.parametrize("task", ["modelnet40", "protein"])
def test_local_conv_on_a_backbone_without_a_grid_exits_2_with_one_line(task, tmp_path, capsys):
    assert train.main([f"task={task}", "model.local_conv=5", f"output_dir={tmp_path}/runs",
                       f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unknown option 'local_conv'" in error
    assert not any(tmp_path.iterdir())


def test_lotformer_with_local_conv_trains_on_cifar(cifar_args, tmp_path, new_store):
    args = [*cifar_args, "attention=lotformer", "model.local_conv=5", "trainer.max_steps=2", "trainer.epochs=1",
            f"output_dir={tmp_path}/runs", f"tracking.uri={new_store(tmp_path / 'store')}"]
    assert train.main(args) == 0
    (checkpoint,) = (tmp_path / "runs").glob("*/*/best.pt")
    state = torch.load(checkpoint, weights_only=True)["model"]
    assert state["encoder.blocks.0.attn.local_conv.weight"].shape == (16 // 2, 1, 5, 5)
