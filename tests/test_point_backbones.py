"""The point-cloud backbones (point_transformer, set_transformer) with attentions from the registry."""
from __future__ import annotations

import pytest
import torch

from attention import AttentionSpec, get_attention, list_attentions
from attention.pooling import PoolingSpec
from attention.softmax import SoftmaxAttention
from backbones import build_backbone
from lab.registry import ConfigError

ATTENTIONS = ["softmax", "esp", "lotformer"]
SMALL = {"point_transformer": dict(dim=16, depth=1, num_heads=2, neighbours=4, num_tokens=12, head_hidden=16),
         "set_transformer": dict(dim=16, depth=1, num_heads=2, num_inducing=4)}


def build(name: str, attention: str = "softmax", pooling: PoolingSpec = PoolingSpec(), in_channels: int = 3,
          **options):
    torch.manual_seed(0)
    return build_backbone(name, num_classes=5, in_channels=in_channels, attention=AttentionSpec(attention),
                          pooling=pooling, **{**SMALL[name], "head_dropout": 0.0, **options})


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("backbone", sorted(SMALL))
def test_logits_and_gradients_reach_every_parameter(backbone, attention):
    if backbone == "set_transformer" and not get_attention(attention).supports_cross:
        pytest.skip(f"{attention} has no cross-attention (the refusal is tested below)")
    model = build(backbone, attention)
    points = torch.rand(3, 40, 3) * 2 - 1
    logits = model(points)
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    missing = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    if backbone == "set_transformer" and get_attention(attention).doubly_stochastic:
        # one seed query must spread its mass as the key marginal says, whatever the query is
        missing -= {"pool.mab.norm_query.weight", "pool.mab.norm_query.bias", "pool.mab.attn.to_q.weight"}
    assert not missing, f"no gradient reached {sorted(missing)}"


@pytest.mark.parametrize("backbone", sorted(SMALL))
def test_normals_are_a_second_input_triplet(backbone):
    model = build(backbone, in_channels=6)
    points = torch.rand(2, 30, 6)
    assert model(points).shape == (2, 5)
    assert not torch.allclose(model(points), model(torch.cat([points[..., :3], -points[..., 3:]], -1)))


@pytest.mark.parametrize("backbone, options", [("set_transformer", {}), ("point_transformer", {"num_tokens": None})])
def test_outputs_do_not_depend_on_point_order(backbone, options):
    """Without farthest-point sampling both models are functions of the set: permuting points changes nothing."""
    model = build(backbone, **options).double().eval()
    points = torch.rand(2, 25, 3, dtype=torch.float64)
    permuted = points[:, torch.randperm(25)]
    assert torch.allclose(model(points), model(permuted), atol=1e-10)


def test_point_transformer_attends_over_the_farthest_point_centres(monkeypatch):
    model = build("point_transformer", num_tokens=7)
    seen = []
    monkeypatch.setattr(model.encoder, "forward", lambda x, padding_mask=None: seen.append(x.shape) or x)
    model(torch.rand(2, 30, 3))
    assert seen == [(2, 7, 16)]
    all_points = build("point_transformer", num_tokens=None)
    monkeypatch.setattr(all_points.encoder, "forward", lambda x, padding_mask=None: seen.append(x.shape) or x)
    all_points(torch.rand(2, 30, 3))
    assert seen[-1] == (2, 30, 16)


def test_poolings_come_from_the_registry():
    assert build("point_transformer").pool.output_dim == 32  # max_mean by default: 2 x dim
    assert build("point_transformer", pooling=PoolingSpec("mean")).pool.output_dim == 16
    assert type(build("set_transformer").pool).__name__ == "PMA"
    assert build("set_transformer", pooling=PoolingSpec("max_mean")).head.in_features == 32
    with pytest.raises(ConfigError, match="CLS token"):
        build("point_transformer", pooling=PoolingSpec("cls"))


def test_set_transformer_refuses_attention_without_cross_support(monkeypatch):
    monkeypatch.setattr(SoftmaxAttention, "supports_cross", False)
    with pytest.raises(ConfigError, match="attention 'softmax' does not support cross-attention; mechanisms that do"):
        build("set_transformer", "softmax")
    build("point_transformer", "softmax")  # self-attention only: still fine


def test_set_transformer_with_esp_fails_at_construction_naming_capable_mechanisms():
    if get_attention("esp").supports_cross:
        pytest.skip("this esp supports cross-attention")
    capable = [name for name in list_attentions() if get_attention(name).supports_cross]
    with pytest.raises(ConfigError, match="attention 'esp' does not support cross-attention") as error:
        build("set_transformer", "esp")
    assert all(name in str(error.value) for name in capable)
