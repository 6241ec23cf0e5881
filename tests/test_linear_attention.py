"""The shared linear-attention core (`luna`, `linear`, `performer`) against independent dense references, and
the memory of every mechanism the registry declares linear.

The reference here is the plain definition: features from the mechanism's own φ (exponentiated without any
stabiliser for Performer), the full n×n kernel, masks, then row normalisation; with δ = 0 it is free of every
implementation choice the core makes (stabilisers, chunking, state carrying).
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.profiler import ProfilerActivity, profile

from attention import build_attention, get_attention, list_attentions
from attention.linear_attention import LinearAttentionCore

NAMES = [name for name in list_attentions() if issubclass(get_attention(name), LinearAttentionCore)]
LINEAR = [pytest.param(name, causal, id=f"{'causal' if causal else 'bidirectional'}-{name}")
          for name in list_attentions() if get_attention(name).complexity == "linear"
          for causal in (False, True) if get_attention(name).supports_causal or not causal]
B, H, D = 2, 2, 8


def make(name: str, dtype=torch.float64, **options) -> LinearAttentionCore:
    torch.manual_seed(0)
    return build_attention(name, num_heads=H, head_dim=D, **options).to(dtype)


def make_chunked(name: str, dtype=torch.float32):
    """A float32 core; the shared linear core with small chunks, so that chunking is exercised."""
    return make(name, dtype, **({"chunk_size": 16} if name in NAMES else {}))


def qkv(n: int, m: int | None = None, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    m = n if m is None else m
    return (torch.randn(B, H, n, D, generator=g, dtype=dtype), torch.randn(B, H, m, D, generator=g, dtype=dtype),
            torch.randn(B, H, m, D, generator=g, dtype=dtype))


def reference(core: LinearAttentionCore, q, k, v, key_padding_mask=None, causal=False):
    """Σ_j κ(q_i, k_j) v_j / Σ_j κ(q_i, k_j) over the allowed keys, κ = ⟨φ(q), φ(k)⟩, dense and unstabilised."""
    fq, fk = core.feature_map(q), core.feature_map(k)
    if core.feature_map.exponential:
        fq, fk = fq.exp(), fk.exp()
    kernel = fq @ fk.transpose(-1, -2)  # (B, H, Nq, Nk)
    if key_padding_mask is not None:
        kernel = kernel.masked_fill(key_padding_mask[:, None, None, :], 0.0)
    if causal:
        kernel = kernel.tril()
    return (kernel @ v) / kernel.sum(-1, keepdim=True)


@pytest.mark.parametrize("name", NAMES)
def test_non_causal_equals_dense_normalised_kernel_attention(name):
    core = make(name, eps=0.0)
    q, k, v = qkv(11, 17)
    pad = torch.arange(17)[None, :] >= torch.tensor([17, 9])[:, None]
    torch.testing.assert_close(core(q, k, v), reference(core, q, k, v), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(core(q, k, v, key_padding_mask=pad), reference(core, q, k, v, pad),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 63, 100])
def test_causal_chunked_equals_masked_quadratic_form(name, n):
    core = make(name, eps=0.0, chunk_size=16)
    q, k, v = qkv(n)
    torch.testing.assert_close(core(q, k, v, causal=True), reference(core, q, k, v, causal=True),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 63])
def test_recurrent_decoding_equals_chunked_causal_attention(name, n):
    """Token by token with the O(1) state, δ included (both add it at each query's own stabiliser scale)."""
    core = make(name, chunk_size=16)
    q, k, v = qkv(n)
    state, steps = None, []
    for t in range(n):
        out, state = core.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], state)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=2), core(q, k, v, causal=True), rtol=1e-10, atol=1e-12)
    assert state.kv.shape == (B, H, state.k_sum.shape[-1], D), "the decoding state does not grow with n"


@pytest.mark.parametrize("name", NAMES)
def test_prefill_then_decode_equals_one_causal_pass(name):
    core = make(name, chunk_size=4)
    q, k, v = qkv(13)
    full = core(q, k, v, causal=True)
    prefix, state = core.step(q[:, :, :10], k[:, :, :10], v[:, :, :10])
    rest, _ = core.step(q[:, :, 10:], k[:, :, 10:], v[:, :, 10:], state)
    torch.testing.assert_close(torch.cat([prefix, rest], dim=2), full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_padding_is_removed_after_the_feature_map(name, causal):
    """Padded keys set to 0 must not count: φ(0) ≠ 0, so masking the inputs instead would fail this."""
    core = make(name, chunk_size=4)
    zero = torch.zeros(1, 1, 1, D, dtype=torch.float64)
    assert core.feature_map(zero).abs().sum() > 0, "φ(0) = 0 would make this test vacuous"
    q, k, v = qkv(7)
    valid = core(q, k, v, causal=causal)
    zeros = torch.zeros(B, H, 5, D, dtype=torch.float64)
    qp, kp, vp = (torch.cat([t, zeros], dim=2) for t in (q, k, v))
    padded = core(qp, kp, vp, key_padding_mask=torch.arange(12)[None, :].expand(B, 12) >= 7, causal=causal)
    torch.testing.assert_close(padded[:, :, :7], valid, rtol=1e-10, atol=1e-12)
    if not causal:  # cross-attention: a query padding mask of its own, keys padded with zeros
        padded = core(q, kp, vp, key_padding_mask=torch.arange(12)[None, :].expand(B, 12) >= 7)
        torch.testing.assert_close(padded, valid, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_query_side_scaling_cancels(name):
    """A positive per-query factor on φ(q) (LUNA's query envelope h(q)) leaves every output unchanged."""

    class Enveloped(type(make(name))):
        def _query_features(self, q):
            return super()._query_features(q) * torch.exp(q.sum(-1, keepdim=True))  # (B, H, N, 1) > 0

    torch.manual_seed(0)
    core = make(name, eps=0.0)
    enveloped = Enveloped(num_heads=H, head_dim=D, eps=0.0).to(torch.float64)
    enveloped.load_state_dict(core.state_dict())
    q, k, v = qkv(9)
    for causal in (False, True):
        torch.testing.assert_close(enveloped(q, k, v, causal=causal), core(q, k, v, causal=causal),
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_rows_of_the_attention_matrix_sum_to_one_and_are_non_negative(name):
    core = make(name, eps=0.0)
    q, k, _ = qkv(10)
    for causal in (False, True):
        matrix = core.attention_matrix(q, k, causal=causal)
        assert (matrix >= 0).all()
        torch.testing.assert_close(matrix.sum(-1), torch.ones(B, H, 10, dtype=torch.float64))


@pytest.mark.parametrize("name", NAMES)
def test_causal_outputs_do_not_depend_on_future_keys_even_through_the_stabiliser(name):
    """Future keys with much larger features (new running maxima) leave earlier outputs bit-for-bit close."""
    core = make(name, chunk_size=4)
    q, k, v = qkv(12)
    k2 = k.clone()
    k2[:, :, 6:] *= 4.0
    torch.testing.assert_close(core(q, k2, v, causal=True)[:, :, :6], core(q, k, v, causal=True)[:, :, :6],
                               rtol=1e-12, atol=1e-14)


def _saved_numels(core, n: int, causal: bool) -> list[int]:
    """Element counts of every tensor autograd saves for backward (one sequence, one head, last 100 padded)."""
    q, k, v = (torch.randn(1, 1, n, D, requires_grad=True) for _ in range(3))
    sizes: list[int] = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        out = core(q, k, v, key_padding_mask=torch.arange(n)[None, :] >= n - 100, causal=causal)
    out.sum().backward()
    return sizes


@pytest.mark.parametrize("name, causal", LINEAR)
def test_nothing_quadratic_is_saved_for_backward_and_memory_is_linear(name, causal):
    core = make(name, torch.float32)
    n = 2048
    sizes = _saved_numels(core, n, causal)
    assert max(sizes) < n * n, f"a saved tensor of {max(sizes)} elements at n = {n}"
    doubled = _saved_numels(core, 2 * n, causal)
    assert sum(doubled) <= 2.1 * sum(sizes), "saved-for-backward memory grows faster than n"


def _bytes_allocated(core, n: int, causal: bool) -> int:
    """Every byte allocated during one forward+backward, transients included (profiler memory events)."""
    q, k, v = (torch.randn(1, 1, n, D, requires_grad=True) for _ in range(3))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        core(q, k, v, causal=causal).sum().backward()
    return sum(event.cpu_memory_usage for event in prof.events() if event.cpu_memory_usage > 0)


@pytest.mark.parametrize("name, causal", LINEAR)
def test_work_allocated_in_forward_and_backward_is_linear(name, causal):
    """Catches transients saved-tensor checks miss, e.g. a per-chunk slice whose backward writes a full-size
    gradient (n/chunk of them: quadratic)."""
    core = make_chunked(name)
    assert _bytes_allocated(core, 512, causal) <= 2.2 * _bytes_allocated(core, 256, causal)
