"""Diagnostics of what the attention (and a constrained pooling) does, on a fixed batch of a few examples.

During one forward pass of the model on the first examples of a split, the inputs of two kinds of module
are captured (duck typing: lab knows no mechanism by name):

* an attention block: any module with `attention_maps(x, key_padding_mask=...)` returning its
  (B, H, Nq, Nk) attention on input x and a forward taking `(x, context=None, key_padding_mask=None)`
  (`attention.MultiHeadAttention`); skipped: blocks called with a context (cross-attention), blocks whose
  `causal` attribute is true (their column sums are not meant to be 1: a translation decoder's would drown
  its encoder's), and sequences longer than `MAX_TOKENS` (the matrix is n x n);
* a sliced pooling: any module with `slice_diagnostics(x, padding_mask)` returning per-slice vectors
  (`cswe`: slice weights, dual variables λ and the lifted cost's violation of ε on these sets).

Measured per attention block, over valid tokens only: how far row and column sums are from 1 (a
doubly-stochastic mechanism is close on both; softmax only on rows) and the mean row entropy in nats
(log n for uniform attention, 0 for a permutation). Figures: the attention maps of the first example
(blocks x first heads) and a bar chart per sliced pooling.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .data import to_device

MAX_TOKENS = 1024
PROBE_EXAMPLES = 2


@dataclass
class Probe:
    attention: list[tuple[str, Tensor, Tensor | None]] = field(default_factory=list)  # (block, (B,H,N,N), (B,N) mask)
    slices: list[tuple[str, dict[str, Tensor]]] = field(default_factory=list)  # (module, name -> (L,) vector)

    def metrics(self) -> dict[str, float]:
        """`attention/<stat>` over all blocks (max deviations, mean entropy) and `attention/<block>/<stat>`."""
        per_block = {name: attention_statistics(attention, mask) for name, attention, mask in self.attention}
        out = {}
        if per_block:
            out = {"attention/row_sum_max_dev": max(s["row_sum_max_dev"] for s in per_block.values()),
                   "attention/col_sum_max_dev": max(s["col_sum_max_dev"] for s in per_block.values()),
                   "attention/row_entropy": sum(s["row_entropy"] for s in per_block.values()) / len(per_block)}
        for name, stats in per_block.items():
            out.update({f"attention/{short_name(name)}/{key}": value for key, value in stats.items()})
        for name, vectors in self.slices:
            if "violation" in vectors:
                out[f"slices/{short_name(name)}/violation_max"] = float(vectors["violation"].max())
        return out

    def figures(self) -> dict[str, Callable[[], Any]]:
        """name -> a function drawing the figure (only the kinds of module the model has)."""
        figures = {}
        if self.attention:
            figures["attention_maps"] = partial(plot_attention_maps, self.attention)
        if self.slices:
            figures["slice_diagnostics"] = partial(plot_slice_diagnostics, self.slices)
        return figures


def short_name(module_name: str) -> str:
    """`encoder.blocks.0.attention` -> `blocks.0.attention`: a metric-friendly module path ("model": the root)."""
    if not module_name:
        return "model"
    return module_name.removeprefix("encoder.")


def probe_model(task, model: nn.Module, dataset, device: torch.device, examples: int = PROBE_EXAMPLES) -> Probe:
    """Run `task.eval_step` on the first `examples` items of `dataset` and capture what is described above."""
    batch = to_device(task.collate([dataset[i] for i in range(min(examples, len(dataset)))]), device)
    was_training = model.training
    model.eval()
    try:
        return capture(model, lambda: task.eval_step(model, batch))
    finally:
        model.train(was_training)


def capture(model: nn.Module, forward: Callable[[], object]) -> Probe:
    """Run `forward()` and measure every attention block and sliced pooling it calls."""
    attention_inputs: list[tuple[str, nn.Module, Tensor, Tensor | None]] = []
    slice_inputs: list[tuple[str, nn.Module, Tensor, Tensor | None]] = []

    def attention_hook(name):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["x"]
            context = args[1] if len(args) > 1 else kwargs.get("context")
            if context is None and not getattr(module, "causal", False) and x.shape[1] <= MAX_TOKENS:
                attention_inputs.append((name, module, x.detach(), kwargs.get("key_padding_mask")))
        return hook

    def slice_hook(name):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["x"]
            mask = args[1] if len(args) > 1 else kwargs.get("padding_mask")
            slice_inputs.append((name, module, x.detach(), mask))
        return hook

    handles = []
    for name, module in model.named_modules():
        if callable(getattr(module, "attention_maps", None)):
            handles.append(module.register_forward_pre_hook(attention_hook(name), with_kwargs=True))
        if callable(getattr(module, "slice_diagnostics", None)):
            handles.append(module.register_forward_pre_hook(slice_hook(name), with_kwargs=True))
    try:
        with torch.no_grad():
            forward()
            return Probe(
                attention=[(name, module.attention_maps(x, key_padding_mask=mask).float().cpu(),
                            None if mask is None else mask.cpu()) for name, module, x, mask in attention_inputs],
                slices=[(name, {key: value.detach().float().cpu() for key, value in
                                module.slice_diagnostics(x, mask).items()}) for name, module, x, mask in slice_inputs])
    finally:
        for handle in handles:
            handle.remove()


def attention_statistics(attention: Tensor, mask: Tensor | None) -> dict[str, float]:
    """Max |row sum - 1| and max |column sum - 1| over valid tokens, mean row entropy (nats) over valid rows.

    attention: (B, H, N, N) with padded keys at zero weight; mask: (B, N) True = padding, or None.
    """
    b, h, n, _ = attention.shape
    valid = torch.ones(b, n, dtype=torch.bool) if mask is None else ~mask
    v = valid[:, None, :].float()  # (B, 1, N)
    row_sums = attention.sum(-1)  # (B, H, N)
    col_sums = (attention * valid[:, None, :, None]).sum(-2)  # (B, H, N): over valid queries only
    entropy = -(attention * attention.clamp_min(1e-12).log()).sum(-1)  # (B, H, N)
    return {"row_sum_max_dev": float(((row_sums - 1).abs() * v).amax()),
            "col_sum_max_dev": float(((col_sums - 1).abs() * v).amax()),
            "row_entropy": float((entropy * v).sum() / (v.sum() * h))}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_attention_maps(maps: list[tuple[str, Tensor, Tensor | None]], max_blocks: int = 8, max_heads: int = 4):
    """A grid (blocks x first heads) of the first example's attention over its valid tokens."""
    plt = _pyplot()
    maps = maps[:max_blocks]
    heads = min(max_heads, maps[0][1].shape[1])
    fig, axes = plt.subplots(len(maps), heads, figsize=(2.6 * heads, 2.3 * len(maps) + 0.3), squeeze=False)
    for row, (name, attention, mask) in enumerate(maps):
        n = attention.shape[-1] if mask is None else int((~mask[0]).sum())
        for head in range(heads):
            ax = axes[row][head]
            image = ax.imshow(attention[0, head, :n, :n].numpy(), cmap="viridis")  # each map on its own scale
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{short_name(name)} h{head}", fontsize=7)
            colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
            colorbar.ax.tick_params(labelsize=5)
    fig.suptitle("attention of the first probe example (rows: queries, columns: keys; own colour scale each)",
                 fontsize=8)
    fig.tight_layout()
    return fig


def plot_slice_diagnostics(slices: list[tuple[str, dict[str, Tensor]]]):
    """One row per sliced pooling, one bar chart per vector it reports (e.g. weight, lambda, violation)."""
    plt = _pyplot()
    columns = max(len(vectors) for _, vectors in slices)
    fig, axes = plt.subplots(len(slices), columns, figsize=(3.4 * columns, 2.4 * len(slices)), squeeze=False)
    for row, (name, vectors) in enumerate(slices):
        for col, (key, values) in enumerate(vectors.items()):
            ax = axes[row][col]
            colors = ["tab:red" if key == "violation" and v > 0 else "tab:blue" for v in values.tolist()]
            ax.bar(range(len(values)), values.numpy(), color=colors)
            if key == "violation":
                ax.axhline(0, color="black", linewidth=0.6)
            ax.set_title(f"{short_name(name)}: {key}", fontsize=8)
            ax.set_xlabel("slice", fontsize=7)
            ax.tick_params(labelsize=6)
        for col in range(len(vectors), columns):
            axes[row][col].axis("off")
    fig.tight_layout()
    return fig
