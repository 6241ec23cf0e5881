"""Attention diagnostics for tracked runs: marginal deviations, entropy and attention-map figures.

During one forward pass on a few validation examples, the inputs of every non-causal self-attention
block are captured (a causal block's column sums are not meant to be 1: a translation decoder's would
drown its encoder's); each block's dense attention matrix is then measured:
how far row and column sums over valid tokens are from 1 (doubly-stochastic mechanisms should be
close on both), and the mean row entropy. Only for sequences short enough to form n x n.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

MAX_TOKENS = 1024


def capture_attention(model: nn.Module, forward: Callable[[], object]) -> list[tuple[str, Tensor]]:
    """Run `forward()` and return (block name, (B, H, N, N) attention) for every non-causal self-attention block.

    An attention block is any module with `attention_maps(x, key_padding_mask=...)` returning its
    (B, H, Nq, Nk) attention on input x (`attention.MultiHeadAttention` has it) and a forward taking
    `(x, context=None, key_padding_mask=None)`; blocks called with a context (cross-attention) and blocks
    whose `causal` attribute is true are skipped.
    """
    inputs: list[tuple[str, nn.Module, Tensor, Tensor | None]] = []

    def hook_for(name):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["x"]
            context = args[1] if len(args) > 1 else kwargs.get("context")
            if context is None and not getattr(module, "causal", False) and x.shape[1] <= MAX_TOKENS:
                inputs.append((name, module, x.detach(), kwargs.get("key_padding_mask")))
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True)
               for n, m in model.named_modules() if callable(getattr(m, "attention_maps", None))]
    try:
        with torch.no_grad():
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return [(name, module.attention_maps(x, key_padding_mask=mask).float().cpu(), mask)
            for name, module, x, mask in inputs]


def marginal_deviations(maps: list[tuple[str, Tensor, Tensor | None]]) -> dict[str, float]:
    """Max |row sum - 1|, max |column sum - 1| over valid tokens, and mean row entropy (nats)."""
    rows, cols, entropies = [], [], []
    for _, attention, mask in maps:
        b, _, n, _ = attention.shape
        valid = torch.ones(b, n, dtype=torch.bool) if mask is None else ~mask.cpu()
        v = valid[:, None, :].float()  # (B, 1, N)
        row_sums = attention.sum(-1)  # (B, H, N)
        col_sums = attention.sum(-2)  # (B, H, N)
        rows.append(((row_sums - 1).abs() * v).amax())
        cols.append(((col_sums - 1).abs() * v).amax())
        p = attention.clamp_min(1e-12)
        entropy = -(attention * p.log()).sum(-1)  # (B, H, N)
        entropies.append((entropy * v).sum() / (v.sum() * attention.shape[1]))
    if not rows:
        return {}
    return {"attention/row_sum_max_dev": float(torch.stack(rows).max()),
            "attention/col_sum_max_dev": float(torch.stack(cols).max()),
            "attention/row_entropy": float(torch.stack(entropies).mean())}


def plot_attention_maps(maps: list[tuple[str, Tensor, Tensor | None]], max_blocks: int = 4, max_heads: int = 4):
    """A grid (blocks x heads) of the first example's attention matrices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = maps[:max_blocks]
    heads = min(max_heads, maps[0][1].shape[1])
    fig, axes = plt.subplots(len(maps), heads, figsize=(2.6 * heads, 2.6 * len(maps)), squeeze=False)
    for row, (name, attention, mask) in enumerate(maps):
        n = attention.shape[-1] if mask is None else int((~mask[0]).sum())
        for head in range(heads):
            ax = axes[row][head]
            ax.imshow(attention[0, head, :n, :n].numpy(), cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name.replace('encoder.blocks.', 'block ')} h{head}", fontsize=7)
    fig.tight_layout()
    return fig
