"""Properties every registered pooling must have (parametrised over the registry) and pma specifics
(the pooling config files are checked against the constructors in test_config_defaults.py)."""
from __future__ import annotations

import pytest
import torch

from attention import AttentionCore
from attention.pooling import build_pooling, list_poolings
from attention.pooling.base import POOLINGS
from attention.registry import ATTENTIONS
from lab.registry import ConfigError

B, N, C = 3, 7, 8
ALL = list_poolings()
SET_POOLINGS = [n for n in ALL if not POOLINGS.get(n).needs_cls_token]


def make(name: str, dtype=torch.float32, **options):
    torch.manual_seed(0)
    return build_pooling(name, dim=C, **options).to(dtype)


def sets(n: int = N, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(B, n, C, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_registry_lists_the_poolings_and_rejects_unknown_names():
    assert {"mean", "max", "cls", "pma", "swe", "cswe"} <= set(ALL)
    with pytest.raises(ConfigError, match="valid choices: .*swe"):
        build_pooling("sw", dim=C)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_shape_finite_and_gradients(name, padded, padding):
    pool = make(name).train()
    x = sets().requires_grad_()
    mask = padding(N, [N, 5, 2]) if padded else None
    out = pool(x, mask)
    assert out.shape == (B, pool.output_dim) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    if padded:
        assert x.grad[2, 2:].abs().max() == 0, "padded elements must not influence the output"
    for pname, param in pool.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, f"no gradient reaches {pname}"


@pytest.mark.parametrize("name", ALL)
def test_padding_invariance(name, padding):
    """Appending padded elements with arbitrary values changes nothing."""
    pool = make(name, torch.float64).eval()
    x = sets(dtype=torch.float64)
    junk = torch.randn(B, 4, C, dtype=torch.float64) * 50
    out = pool(torch.cat([x, junk], dim=1), padding(N + 4, [N] * B))
    torch.testing.assert_close(out, pool(x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", SET_POOLINGS)
def test_permutation_invariance(name, padding):
    pool = make(name, torch.float64).eval()
    x, mask = sets(dtype=torch.float64), padding(N, [N, 5, 3])
    perm = torch.randperm(N)
    torch.testing.assert_close(pool(x[:, perm], mask[:, perm]), pool(x, mask), rtol=1e-9, atol=1e-10)


# -- pma -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_seeds", [1, 3])
def test_pma_output_is_the_flattened_seeds(num_seeds, padding):
    pool = make("pma", num_seeds=num_seeds, num_heads=2)
    assert pool.output_dim == num_seeds * C
    assert pool(sets(), padding(N, [N, 4, 1])).shape == (B, num_seeds * C)


def test_pma_with_as_many_seeds_as_elements_keeps_every_seed(padding):
    """Nq == Nk must not be mistaken for self-attention (which would treat seeds as padded)."""
    pool = make("pma", num_seeds=N).eval()
    out = pool(sets(), padding(N, [N, 4, 2])).view(B, N, C)
    assert (out[2].abs().sum(-1) > 0).all()


def test_pma_refuses_an_attention_without_cross_attention(monkeypatch):
    class SelfOnly(AttentionCore):
        supports_cross = False

    monkeypatch.setitem(ATTENTIONS._entries, "self_only_test", SelfOnly)
    with pytest.raises(ConfigError, match="does not support cross-attention; mechanisms that do: .*softmax"):
        build_pooling("pma", dim=C, attention="self_only_test")
