"""Performer (FAVOR+): orthogonal random features, deterministic unless redrawn, an estimate of softmax."""
from __future__ import annotations

import pytest
import torch

from attention import build_attention
from attention.performer import orthogonal_gaussian
from lab.registry import ConfigError

F64 = torch.float64


def make(**options):
    torch.manual_seed(0)
    return build_attention("performer", num_heads=2, head_dim=8, **options).to(F64)


def test_projection_rows_are_orthogonal_within_each_block():
    torch.manual_seed(0)
    omega = orthogonal_gaussian(20, 8).double()  # blocks of 8, 8, 4 rows
    for block in omega.split(8):
        directions = block / block.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(directions @ directions.T, torch.eye(len(block), dtype=F64), atol=1e-6, rtol=0)
    assert omega.norm(dim=-1).std() > 0, "row norms are drawn (chi distribution), not all equal"


def test_features_are_fixed_without_redraw_and_redrawn_in_training_with_it():
    q, k, v = (torch.randn(2, 2, 6, 8, dtype=F64) for _ in range(3))
    fixed = make().train()
    assert torch.equal(fixed(q, k, v), fixed(q, k, v))
    redrawn = make(redraw=True).train()
    first = redrawn.feature_map.projection.clone()
    out = redrawn(q, k, v)
    assert not torch.equal(redrawn.feature_map.projection, first)
    assert not torch.allclose(redrawn(q, k, v), out)
    drawn = redrawn.feature_map.projection.clone()
    _, state = redrawn.step(q[:, :, :3], k[:, :, :3], v[:, :, :3])
    redrawn.step(q[:, :, 3:], k[:, :, 3:], v[:, :, 3:], state)
    assert torch.equal(redrawn.feature_map.projection, drawn), "decoding never redraws mid-sequence"
    redrawn.eval()
    assert torch.equal(redrawn(q, k, v), redrawn(q, k, v)), "no redraw at evaluation"
    assert "feature_map.projection" in fixed.state_dict(), "the draw is saved with the model"


def test_kernel_estimates_softmax_and_the_error_shrinks_with_more_features():
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 2, 16, 8, generator=g, dtype=F64) * 0.6 for _ in range(2))
    softmax = build_attention("softmax", num_heads=2, head_dim=8).attention_matrix(q, k)
    errors = {m: (make(num_features=m).attention_matrix(q, k) - softmax).abs().mean() for m in (8, 512)}
    assert errors[512] < errors[8] / 3, errors
    assert errors[512] < 0.01, errors

    torch.manual_seed(0)
    x, y = (torch.randn(8, dtype=F64) * 0.5 for _ in range(2))
    omega = orthogonal_gaussian(16384, 8).double()
    scale = 8 ** -0.25
    phi = [torch.exp(omega @ (z * scale) - (z * scale).square().sum() / 2) for z in (x, y)]
    estimate = (phi[0] * phi[1]).mean()
    assert abs(estimate / torch.exp(x @ y / 8 ** 0.5) - 1) < 0.03, "E[φ(x)ᵀφ(y)] = exp(xᵀy / √d)"


def test_stabilisers_keep_large_inputs_finite():
    q, k, v = (torch.randn(1, 2, 10, 8, dtype=torch.float32) * 30 for _ in range(3))
    core = build_attention("performer", num_heads=2, head_dim=8)
    for causal in (False, True):
        out = core(q, k, v, causal=causal)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("option", ["num_features", "chunk_size"])
def test_non_positive_sizes_are_rejected(option):
    with pytest.raises(ConfigError, match=option):
        build_attention("performer", num_heads=2, head_dim=8, **{option: 0})
