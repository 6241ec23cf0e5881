"""Incremental attention for decoding, parametrised over every causal mechanism of the registry.

Stepping through a sequence (one token at a time, or a prefill then single tokens) must equal the causal
forward pass over the whole sequence, in float64, for the cores (`step`) and for the multi-head wrapper
(`MultiHeadAttention.step`, self- and cross-attention).
"""
from __future__ import annotations

import pytest
import torch

from attention import MultiHeadAttention, build_attention, get_attention, list_attentions

CAUSAL = [n for n in list_attentions() if get_attention(n).supports_causal]
B, H, D = 2, 2, 8


def tensors(*shapes, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for shape in shapes]


def test_the_decoder_mechanisms_are_the_causal_ones():
    assert {"softmax", "luna", "linear", "performer"} <= set(CAUSAL)


@pytest.mark.parametrize("name", CAUSAL)
def test_core_steps_equal_the_causal_forward(name):
    torch.manual_seed(0)
    core = build_attention(name, num_heads=H, head_dim=D).double()
    q, k, v = tensors(*[(B, H, 11, D)] * 3)
    full = core(q, k, v, causal=True)
    state, outputs = None, []
    for t in range(11):
        out, state = core.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], state)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, dim=2), full, rtol=1e-10, atol=1e-12)
    prefix, state = core.step(q[:, :, :6], k[:, :, :6], v[:, :, :6])  # prefill, then one token at a time
    rest = [core.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], state)[0] for t in range(6, 7)]
    torch.testing.assert_close(torch.cat([prefix, *rest], dim=2), full[:, :, :7], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", CAUSAL)
def test_padded_new_tokens_are_never_attended_to(name):
    torch.manual_seed(0)
    core = build_attention(name, num_heads=H, head_dim=D).double()
    q, k, v = tensors(*[(B, H, 9, D)] * 3)
    padding = torch.arange(9)[None, :] >= torch.tensor([9, 5])[:, None]  # row 1: 4 padded tokens at the end
    full = core(q, k, v, key_padding_mask=padding, causal=True)
    state, outputs = None, []
    for t in range(9):
        out, state = core.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], state,
                               key_padding_mask=padding[:, t:t + 1])
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, dim=2), full, rtol=1e-10, atol=1e-12)


def test_softmax_cache_grows_and_the_linear_state_does_not():
    q, k, v = tensors(*[(B, H, 1, D)] * 3)
    sizes = {}
    for name in ("softmax", "luna"):
        core = build_attention(name, num_heads=H, head_dim=D).double()
        state, numels = None, []
        for _ in range(5):
            _, state = core.step(q, k, v, state)
            numels.append(sum(t.numel() for t in state if t is not None))
        sizes[name] = numels
    assert sizes["softmax"] == [sizes["softmax"][0] * n for n in range(1, 6)]
    assert len(set(sizes["luna"])) == 1


@pytest.mark.parametrize("name", CAUSAL)
def test_multihead_self_attention_steps_equal_its_forward(name):
    torch.manual_seed(0)
    block = MultiHeadAttention(16, 2, name, causal=True).double()
    (x,) = tensors((B, 7, 16))
    state, outputs = None, []
    for t in range(7):
        out, state = block.step(x[:, t:t + 1], state)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, dim=1), block(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", CAUSAL)
def test_multihead_cross_attention_steps_equal_its_forward(name):
    """The context's keys and values are projected at the first step and reused; target length = context
    length on purpose: the context's padding must not be mistaken for the queries' padding."""
    torch.manual_seed(0)
    block = MultiHeadAttention(16, 2, name, cross=True).double()
    x, context = tensors((B, 6, 16), (B, 6, 16))
    context_padding = torch.arange(6)[None, :] >= torch.tensor([6, 2])[:, None]
    full = block(x, context, key_padding_mask=context_padding)
    assert full[1, 2:].abs().sum() > 0, "valid target positions facing a padded context position are not padding"
    state, outputs = None, []
    for t in range(6):
        out, state = block.step(x[:, t:t + 1], state, context, context_padding)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, rtol=1e-10, atol=1e-12)


def test_a_mechanism_without_a_causal_form_has_no_step():
    core = build_attention("esp", num_heads=H, head_dim=D)
    with pytest.raises(NotImplementedError, match="esp"):
        core.step(*tensors(*[(B, H, 1, D)] * 3))
