"""LUNA's feature map: exact against a direct evaluation of the channel MLPs, positive-definite, trainable."""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from attention import build_attention
from attention.luna import ChannelFeatures
from lab.registry import ConfigError

F64 = torch.float64


def direct_features(u, a1, c1, a2, c2, scale):
    """scale·relu(Σ_j a2[ℓ,j]·relu(a1[ℓ,j]·u + c1[ℓ,j]) + c2[ℓ]) with every hidden activation materialised."""
    hidden = torch.relu(u[:, None, None] * a1 + c1)  # (P, L, hidden)
    return torch.relu((hidden * a2).sum(-1) + c2) * scale  # (P, L)


def channel_params(num_channels=4, hidden=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(num_channels, hidden, generator=g, dtype=F64) for _ in range(3)]
    params[0][1, :5] = 0.0  # units with a1 = 0 are constant: relu(c1)
    params[0][2, 7] = params[0][2, 8]  # and two units with one shared threshold
    params[1][2, 7] = params[1][2, 8]
    return [p.requires_grad_() for p in params + [torch.randn(num_channels, generator=g, dtype=F64)]]


def test_piecewise_linear_evaluation_equals_the_mlp_with_exact_gradients():
    params = channel_params()
    g = torch.Generator().manual_seed(1)
    u = torch.cat([torch.randn(3000, generator=g, dtype=F64) * 3, torch.tensor([-1e4, 1e4], dtype=F64)])
    u.requires_grad_()
    ours = ChannelFeatures.apply(u, *params, 0.25)
    direct = direct_features(u, *params, 0.25)
    assert 0.05 < (direct == 0).double().mean() < 0.95, "the final ReLU should be active on some inputs only"
    torch.testing.assert_close(ours, direct, rtol=1e-12, atol=1e-12)
    weights = torch.randn(ours.shape, generator=g, dtype=F64)
    ours_grad = torch.autograd.grad((ours * weights).sum(), [u, *params])
    direct_grad = torch.autograd.grad((direct * weights).sum(), [u, *params])
    for name, a, b in zip(["u", "a1", "c1", "a2", "c2"], ours_grad, direct_grad):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def make(dtype=F64, **options):
    torch.manual_seed(0)
    return build_attention("luna", num_heads=2, head_dim=8, **options).to(dtype)


def test_features_are_non_negative_and_the_kernel_is_positive_semidefinite():
    core = make()
    x = torch.randn(1, 2, 40, 8, dtype=F64) * 2
    features = core.feature_map(x)  # (1, 2, 40, m·L)
    assert features.shape[-1] == 16 * 4 and (features >= 0).all() and (features > 0).any()
    gram = features @ features.transpose(-1, -2)  # (1, 2, 40, 40)
    assert (gram >= 0).all()
    assert torch.linalg.eigvalsh(gram).min() > -1e-10


def test_luna_attention_equals_a_direct_implementation_in_value_and_gradient():
    """The whole mechanism against φ from materialised MLPs and the dense normalised kernel."""
    core = make()
    fm = core.feature_map
    q, k, v = (torch.randn(2, 2, 9, 8, dtype=F64, requires_grad=True) for _ in range(3))

    def phi(x):
        u = x @ fm.projection.T + fm.projection_bias  # (B, H, N, m)
        psi = direct_features(u.reshape(-1), fm.in_weight, fm.in_bias, fm.out_weight, fm.out_bias, 1 / 4)
        return psi.view(*u.shape[:-1], -1)

    kernel = phi(q) @ phi(k).transpose(-1, -2)  # (B, H, 9, 9)
    direct = (kernel @ v) / (kernel.sum(-1, keepdim=True) + core.eps)
    ours = core(q, k, v)
    torch.testing.assert_close(ours, direct, rtol=1e-10, atol=1e-12)
    weights = torch.randn_like(ours)
    tensors = [q, k, v, *core.parameters()]
    for name, a, b in zip(["q", "k", "v"] + [n for n, _ in core.named_parameters()],
                          torch.autograd.grad((ours * weights).sum(), tensors),
                          torch.autograd.grad((direct * weights).sum(), tensors)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)
        assert a.abs().sum() > 0, f"no gradient reaches {name}"
    assert {n for n, _ in core.named_parameters()} == {
        "feature_map.projection", "feature_map.projection_bias", "feature_map.in_weight",
        "feature_map.in_bias", "feature_map.out_weight", "feature_map.out_bias"}


def test_initialisation_and_shapes_follow_the_paper():
    torch.manual_seed(0)
    core = build_attention("luna", num_heads=4, head_dim=64, num_features=32, num_channels=3, hidden=16)
    fm = core.feature_map
    assert fm.projection.shape == (32, 64), "one W shared by all heads"
    assert abs(fm.projection.std().item() * math.sqrt(64) - 1) < 0.1, "W ~ N(0, 1/d)"
    assert (fm.projection_bias == 0).all()
    assert fm.in_weight.shape == fm.out_weight.shape == (3, 16) and fm.out_bias.shape == (3,)


def test_hidden_activations_are_never_stored_for_backward():
    core, n = make(torch.float32), 1024
    q, k, v = (torch.randn(1, 1, n, 8, requires_grad=True) for _ in range(3))
    sizes: list[int] = []
    with saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        out = core(q, k, v)
    out.sum().backward()
    assert max(sizes) < n * 16 * 64 / 4, "something of the size of the ψ hidden layer (n·m·hidden) was saved"


@pytest.mark.parametrize("option", ["num_features", "num_channels", "hidden", "chunk_size"])
def test_non_positive_sizes_are_rejected(option):
    with pytest.raises(ConfigError, match=option):
        build_attention("luna", num_heads=2, head_dim=8, **{option: 0})


# -- options beyond Listing 1 --------------------------------------------------------------------------------
def test_learned_envelope_is_the_identity_at_init_and_a_learned_positive_key_weight_after():
    plain, enveloped = make(), make(envelope="learned")
    enveloped.load_state_dict(plain.state_dict(), strict=False)  # the same W, b and channel MLPs
    q, k, v = (torch.randn(2, 2, 9, 8, dtype=F64) for _ in range(3))
    mask = torch.arange(9)[None] >= torch.tensor([[9], [6]])
    torch.testing.assert_close(enveloped(q, k, v, key_padding_mask=mask), plain(q, k, v, key_padding_mask=mask))
    with torch.no_grad():
        enveloped.feature_map.envelope.weight.normal_()
        enveloped.feature_map.envelope.bias.fill_(0.3)
    envelope = lambda x: (x @ enveloped.feature_map.envelope.weight.T + 0.3).clamp(-10, 10).exp()  # noqa: E731
    torch.testing.assert_close(enveloped.feature_map(k), plain.feature_map(k) * envelope(k))  # (2, 2, 9, m·L)
    out = enveloped(q, k, v, key_padding_mask=mask)
    out.sum().backward()
    assert enveloped.feature_map.envelope.weight.grad.abs().sum() > 0
    keys = plain.feature_map(k) * envelope(k) * (~mask)[:, None, :, None]  # h(k_j) weights key j
    query = plain.feature_map(q) * envelope(q)  # h(q_i) cancels in row i's ratio (up to δ)
    expected = (query @ keys.transpose(-1, -2) @ v) / (query @ keys.sum(-2, keepdim=True).transpose(-1, -2)
                                                       + enveloped.eps)
    valid = ~mask[:, None, :, None]  # padded query rows are zero
    torch.testing.assert_close(out, expected * valid)


def dead_channels(core, u_scale=0.6) -> torch.Tensor:
    """(L,) True for channels whose pre-activation is <= 0 on every input of a batch."""
    feature_map = core.feature_map
    x = torch.randn(2, 2, 64, 8, dtype=F64) * u_scale
    features = feature_map(x).view(-1, feature_map.num_features, feature_map.in_weight.shape[0])
    return ~(features > 0).flatten(0, 1).any(0)


def test_revive_dead_channels_raises_only_the_dead_ones_once_on_the_first_training_batch():
    core = make(revive_dead_channels=True)
    feature_map = core.feature_map
    with torch.no_grad():
        feature_map.out_bias[:2] = -100.0  # channels 0 and 1 dead everywhere
    before = feature_map.out_bias.detach().clone()
    core.eval()
    assert dead_channels(core)[:2].all()  # evaluation never revives
    core.train()
    q = torch.randn(2, 2, 64, 8, dtype=F64) * 0.6
    core(q, q, q)
    after = feature_map.out_bias.detach().clone()
    assert not dead_channels(core).any() and bool(feature_map.channels_checked)
    torch.testing.assert_close(after[2:], before[2:])  # the live ones are untouched
    positive = (feature_map(q).view(-1, 16, 4) > 0).flatten(0, 1).double().mean(0)
    assert ((positive[:2] - 0.5).abs() < 0.05).all(), positive  # positive on about half of the batch
    core(q * 3, q, q)
    torch.testing.assert_close(feature_map.out_bias.detach(), after)  # once only
    restored = make(revive_dead_channels=True)
    restored.load_state_dict(core.state_dict())  # a resumed run does not revive again
    assert not restored.feature_map.checking_pending


def test_bad_envelope_is_refused():
    with pytest.raises(ConfigError, match="'none', 'learned'"):
        make(envelope="gaussian")
