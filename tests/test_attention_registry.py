"""Properties every registered attention mechanism must have, parametrised over the registry.

A new mechanism gets these tests for free: shapes, finite outputs and gradients reaching every
parameter; padding invariance; `forward == attention_matrix @ v` in float64; causal forms equal to
their masked quadratic form; capability refusals at construction; float32 compute under autocast.
"""
from __future__ import annotations

import pytest
import torch

from attention import build_attention, get_attention, list_attentions
from lab.registry import ConfigError

B, H, D = 2, 2, 8
ALL = list_attentions()
CAUSAL = [n for n in ALL if get_attention(n).supports_causal]
NON_CAUSAL = [n for n in ALL if not get_attention(n).supports_causal]
CROSS = [n for n in ALL if get_attention(n).supports_cross]
SELF_ONLY = [n for n in ALL if not get_attention(n).supports_cross]
DOUBLY = [n for n in ALL if get_attention(n).doubly_stochastic]


def make(name: str, dtype=torch.float32, **options):
    torch.manual_seed(0)
    return build_attention(name, num_heads=H, head_dim=D, **options).to(dtype)


def qkv(n: int, m: int | None = None, dtype=torch.float32):
    m = n if m is None else m
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, H, n, D, generator=g, dtype=dtype)
    k = torch.randn(B, H, m, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, m, D, generator=g, dtype=dtype)
    return q, k, v


def test_registry_lists_softmax_and_rejects_unknown_names():
    assert "softmax" in ALL
    with pytest.raises(ConfigError, match="valid choices: .*softmax"):
        build_attention("sofmax", num_heads=H, head_dim=D)


def test_unknown_option_is_rejected_with_valid_options():
    name = ALL[0]
    with pytest.raises(ConfigError, match="unknown option 'definitely_not_an_option'"):
        build_attention(name, num_heads=H, head_dim=D, definitely_not_an_option=1)


@pytest.mark.parametrize("name", ALL)
def test_interface_attributes(name):
    core = make(name)
    assert isinstance(core.supports_causal, bool) and isinstance(core.supports_cross, bool)
    assert isinstance(core.doubly_stochastic, bool)
    assert core.complexity in ("quadratic", "linear")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_self_attention_shapes_finite_and_gradients_reach_every_parameter(name, padded, padding):
    core = make(name)
    q, k, v = (t.requires_grad_() for t in qkv(9))
    mask = padding(9, [9, 6]) if padded else None
    out = core(q, k, v, key_padding_mask=mask)
    assert out.shape == (B, H, 9, D)
    assert torch.isfinite(out).all()
    if padded:
        assert (out[1, :, 6:] == 0).all(), "padded query rows must be zero"
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    for tensor in (q, k, v):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0
    for pname, param in core.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"no gradient reaches {pname}"
            assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", CROSS)
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_cross_attention_shapes_and_gradients(name, padded, padding):
    core = make(name)
    q, k, v = (t.requires_grad_() for t in qkv(5, 11))
    mask = padding(11, [11, 7]) if padded else None
    out = core(q, k, v, key_padding_mask=mask)
    assert out.shape == (B, H, 5, D) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert k.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    if padded:  # padded keys get no gradient: they do not take part
        assert k.grad[1, :, 7:].abs().max() == 0 and v.grad[1, :, 7:].abs().max() == 0


@pytest.mark.parametrize("name", ALL)
def test_padding_invariance(name, padding):
    """Appending padded tokens with arbitrary values leaves the valid outputs unchanged."""
    core = make(name, torch.float64)
    q, k, v = qkv(7, dtype=torch.float64)
    reference = core(q, k, v)
    junk = [torch.randn(B, H, 4, D, dtype=torch.float64) * 50 for _ in range(3)]
    qp, kp, vp = (torch.cat([t, j], dim=2) for t, j in zip((q, k, v), junk))
    out = core(qp, kp, vp, key_padding_mask=padding(11, [7, 7]))
    torch.testing.assert_close(out[:, :, :7], reference, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_forward_equals_dense_attention_matrix(name, padded, padding):
    core = make(name, torch.float64)
    q, k, v = qkv(10, dtype=torch.float64)
    mask = padding(10, [10, 6]) if padded else None
    matrix = core.attention_matrix(q, k, key_padding_mask=mask)
    assert matrix.shape == (B, H, 10, 10)
    torch.testing.assert_close(core(q, k, v, key_padding_mask=mask), matrix @ v, rtol=1e-7, atol=1e-9)
    if padded:  # no mass between valid and padded tokens
        assert matrix[1, :, :6, 6:].abs().max() == 0 and matrix[1, :, 6:, :].abs().max() == 0


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_equals_masked_quadratic_form(name):
    core = make(name, torch.float64)
    q, k, v = qkv(13, dtype=torch.float64)
    matrix = core.attention_matrix(q, k, causal=True)
    upper = torch.ones(13, 13, dtype=torch.bool).triu(1)
    assert matrix[..., upper].abs().max() == 0, "causal attention must not see the future"
    out = core(q, k, v, causal=True)
    torch.testing.assert_close(out, matrix @ v, rtol=1e-7, atol=1e-9)
    # changing a future token leaves earlier outputs unchanged
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 9:] += 3.0
    v2[:, :, 9:] -= 3.0
    torch.testing.assert_close(core(q, k2, v2, causal=True)[:, :, :9], out[:, :, :9])


@pytest.mark.parametrize("name", NON_CAUSAL)
def test_non_causal_mechanisms_refuse_causal_at_construction(name):
    with pytest.raises(ConfigError) as error:
        build_attention(name, num_heads=H, head_dim=D, causal=True)
    for able in CAUSAL:
        assert able in str(error.value)


@pytest.mark.parametrize("name", SELF_ONLY)
def test_self_only_mechanisms_refuse_cross_attention_at_construction(name):
    with pytest.raises(ConfigError) as error:
        build_attention(name, num_heads=H, head_dim=D, cross=True)
    for able in CROSS:
        assert able in str(error.value)


@pytest.mark.parametrize("name", DOUBLY)
def test_doubly_stochastic_marginals_over_valid_tokens(name, padding):
    """Loose generic check; each mechanism's own tests pin its exact tolerances."""
    core = make(name, torch.float64)
    q, k, _ = qkv(12, dtype=torch.float64)
    matrix = core.attention_matrix(q, k, key_padding_mask=padding(12, [12, 8]))
    for b, n in enumerate([12, 8]):
        valid = matrix[b, :, :n, :n]
        torch.testing.assert_close(valid.sum(-1), torch.ones(H, n, dtype=torch.float64), atol=0.15, rtol=0)
        torch.testing.assert_close(valid.sum(-2), torch.ones(H, n, dtype=torch.float64), atol=0.15, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_runs_in_float32_under_bf16_autocast(name):
    core = make(name)
    q, k, v = qkv(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = core(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    if core.compute_in_float32:
        reference = core(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float())
        torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)
