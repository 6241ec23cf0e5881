"""Post-hoc conversion: torchvision's ViT as ours (exact with softmax), the swap to other mechanisms keeps every
other tensor, `init=` from torchvision or our checkpoints, and LOTFormer's stage 1."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.vision_transformer import VisionTransformer, vit_b_16

from attention import AttentionSpec
from attention.distill import SoftmaxDistillation, attention_row_kl, fit_to_softmax
from attention.pooling import PoolingSpec
from backbones import build_backbone, convert_torchvision_vit
from backbones.pretrained import attention_core_prefixes, compact, load_initial_weights
from backbones.torchvision_vit import load_torchvision_weights, torchvision_vit_state, vit_options
from lab.checkpoint import save_checkpoint
from lab.download import file_digest
from lab.registry import ConfigError

SWAPS = ["luna", "lotformer", "performer", "esp"]


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """torchvision zero-initialises the head and the class token: move every tensor off its initial value so
    that a wrong mapping cannot hide behind zeros."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture
def small_tv_vit() -> VisionTransformer:
    return perturbed(VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=64,
                                       mlp_dim=256, num_classes=10)).eval()


def test_small_torchvision_vit_converted_with_softmax_gives_its_logits(small_tv_vit):
    ours = convert_torchvision_vit(small_tv_vit, attention="softmax")
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, got = small_tv_vit(images), ours(images)
    assert not ours.training and expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_vit_b_16_converted_with_softmax_gives_its_logits():
    tv = perturbed(vit_b_16(weights=None)).eval()
    ours = convert_torchvision_vit(tv)
    assert (ours.encoder.norm.eps, len(ours.encoder.blocks), ours.patch_embed.kernel_size) == (1e-6, 12, (16, 16))
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = tv(images)
        del tv  # 86M parameters: keep one copy alive at a time
        got = ours(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", SWAPS)
def test_swap_adds_only_mechanism_tensors_and_trains(small_tv_vit, attention):
    ours = convert_torchvision_vit(small_tv_vit, attention=attention).train()
    mapped = torchvision_vit_state(small_tv_vit.state_dict())
    in_core = attention_core_prefixes(ours)
    state = ours.state_dict()
    assert {k for k in state if not k.startswith(in_core)} == set(mapped)
    for key, value in mapped.items():
        assert torch.equal(state[key], value), key
    mechanism_tensors = [key for key in state if key.startswith(in_core)]  # FAVOR+'s Ω is a buffer; ESP has none
    assert bool(mechanism_tensors) == (attention != "esp")
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in ours.named_parameters()}
    loss = F.cross_entropy(ours(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    for name, p in ours.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert not torch.equal(p, before[name]), f"{name} did not move"


def our_vit(attention: str, **options) -> torch.nn.Module:
    return build_backbone("vit", num_classes=10, image_size=32, in_channels=3, attention=AttentionSpec(attention),
                          pooling=PoolingSpec(None), patch_size=4, dim=32, depth=2, num_heads=2, **options)


def test_init_from_our_checkpoint_swaps_mechanisms(tmp_path):
    source = our_vit("lotformer")
    path = tmp_path / "best.pt"
    save_checkpoint({"model": source.state_dict(), "step": 3}, path)
    target = our_vit("luna")
    report = load_initial_weights(target, str(path))
    assert report.sha256 == file_digest(path, "sha256")
    assert report.dropped and all(".attn.core." in k for k in report.dropped + report.new)
    assert compact(report.dropped) == "encoder.blocks.*.attn.core.{pivots, mass_logits} (×2)"
    assert "encoder.blocks.*.attn.core.feature_map." in report.summary()
    for key, value in target.state_dict().items():
        if key not in report.new:
            assert torch.equal(value, source.state_dict()[key]), key


def test_init_refuses_what_does_not_fit_in_one_line(tmp_path):
    source = our_vit("softmax")
    path = tmp_path / "best.pt"
    save_checkpoint({"model": source.state_dict()}, path)
    with pytest.raises(ConfigError, match=r"tensor 'pos_embed' has shape \(1, 65, 32\), the model's \(1, 17, 32\)"):
        load_initial_weights(build_backbone("vit", num_classes=10, image_size=16, in_channels=3,
                                            attention=AttentionSpec("luna"), pooling=PoolingSpec(None),
                                            patch_size=4, dim=32, depth=2, num_heads=2), str(path))
    with pytest.raises(ConfigError, match=r"it has no tensor 'encoder.blocks.0.attn.to_q.bias'"):
        load_initial_weights(our_vit("luna", qkv_bias=True), str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_initial_weights(our_vit("luna"), str(tmp_path / "missing.pt"))


def test_init_from_torchvision_maps_and_checks_the_architecture(small_tv_vit, monkeypatch):
    import torchvision.models

    monkeypatch.setattr(torchvision.models, "get_model", lambda name, weights: small_tv_vit)  # offline stand-in
    options = vit_options(small_tv_vit)
    model = build_backbone("vit", attention=AttentionSpec("lotformer"), pooling=PoolingSpec(None), **options)
    report = load_torchvision_weights(model, "vit_b_16")
    assert report.source == "torchvision:vit_b_16.IMAGENET1K_V1"
    assert report.preprocessing == {"resize_size": 256, "crop_size": 224, "interpolation": "bilinear",
                                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert compact(report.new) == "encoder.blocks.*.attn.core.{pivots, mass_logits} (×2)"
    wrong_eps = build_backbone("vit", attention=AttentionSpec("luna"), pooling=PoolingSpec(None),
                               **{**options, "norm_eps": 1e-5})
    with pytest.raises(ConfigError, match="needs model.norm_eps=1e-06"):
        load_torchvision_weights(wrong_eps, "vit_b_16")
    with pytest.raises(ConfigError, match="unknown torchvision ViT 'vit_b_61'; valid choices: vit_b_16"):
        load_torchvision_weights(model, "vit_b_61")
    with pytest.raises(ConfigError, match="no weights 'IMAGENET1K_V9'"):
        load_torchvision_weights(model, "vit_b_16.IMAGENET1K_V9")


def test_row_kl_is_the_mean_kl_divergence_of_normalised_rows():
    teacher = torch.softmax(torch.randn(2, 3, 5, 7, dtype=torch.float64), dim=-1)
    other = torch.softmax(torch.randn(2, 3, 5, 7, dtype=torch.float64), dim=-1)
    expected = F.kl_div(other.log(), teacher, reduction="none").sum(-1).mean()  # torch's KL(teacher ‖ other)
    torch.testing.assert_close(attention_row_kl(teacher, 3.0 * other), expected)  # student rows are normalised
    assert abs(attention_row_kl(teacher, teacher)) < 1e-12 and expected > 0


@pytest.mark.parametrize("target", ["attention", "outputs"])
def test_stage1_fits_only_the_new_tensors_and_keeps_softmax_outputs(small_tv_vit, target):
    softmax_model = convert_torchvision_vit(small_tv_vit)
    model = convert_torchvision_vit(small_tv_vit, attention="lotformer")
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad(), SoftmaxDistillation(model, target) as distillation:
        torch.testing.assert_close(model(images), softmax_model(images))  # the stream is softmax's
        start = float(distillation.loss())
    new = [p for name, p in model.named_parameters() if ".attn.core." in name]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = []
    fit_to_softmax(model, new, steps=30, lr=3e-2, target=target, forward=lambda step: model(images),
                   report=lambda step, loss: losses.append(loss))
    assert losses[-1] < 0.6 * start
    for name, p in model.named_parameters():
        assert p.requires_grad, "stage 1 restores requires_grad"
        assert torch.equal(p, before[name]) != (".attn.core." in name), name
