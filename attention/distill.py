"""Stage 1 of LOTFormer's two-stage conversion: fit only a new mechanism's parameters to softmax.

After `init=` has loaded a softmax-trained model into one with another mechanism, stage 1 (LOTFormer,
arXiv 2509.23436, its BERT/GLUE recipe after Hedgehog) freezes every tensor except those the mechanism
added (pivots and mass logits, LUNA's feature map) and trains them so that each block reproduces what
softmax computes from the same queries and keys:

* `target="attention"`: the recipe's row-wise cross-entropy −Σ_j T_ij log S_ij between softmax's rows T
  (detached) and the mechanism's row-normalised attention matrix S, less T's entropy (so the reported loss is
  KL(T‖S), 0 at a perfect match; the gradient is the same); it forms (B, H, n, n) matrices;
* `target="outputs"`: the mean squared error between the mechanism's and softmax's outputs (B, H, n, D),
  which keeps linear mechanisms linear in n.

While fitting, every block passes softmax's output on, so each block sees exactly the activations of the
trained softmax model. Stage 2 is ordinary training of everything.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import AttentionCore
from .softmax import SoftmaxAttention

Target = Literal["attention", "outputs"]


def attention_row_kl(teacher: Tensor, student: Tensor) -> Tensor:
    """Mean over valid query rows of KL(teacher_i ‖ student_i / Σ_j student_ij); both (B, H, Nq, Nk)."""
    student = student / student.sum(-1, keepdim=True).clamp_min(1e-12)
    log_ratio = teacher.clamp_min(1e-12).log() - student.clamp_min(1e-12).log()
    per_row = (teacher * log_ratio).sum(-1)  # (B, H, Nq); terms with teacher_ij = 0 vanish
    valid = teacher.sum(-1) > 0  # padded query rows are all zero
    return per_row[valid].mean()


class SoftmaxDistillation:
    """While entered: every attention core of `model` is compared with softmax on its own inputs, and
    softmax's output replaces the core's. `loss()` returns the mean comparison loss of the forward passes
    since the last call."""

    def __init__(self, model: nn.Module, target: Target = "attention"):
        if target not in ("attention", "outputs"):
            raise ValueError(f"target must be 'attention' or 'outputs', got {target!r}")
        self.target = target
        self.cores = [m for m in model.modules() if isinstance(m, AttentionCore)]
        self.teachers = {id(core): SoftmaxAttention(core.num_heads, core.head_dim) for core in self.cores}
        self.losses: list[Tensor] = []
        self.handles: list = []

    def __enter__(self) -> "SoftmaxDistillation":
        self.handles = [core.register_forward_hook(self._compare, with_kwargs=True) for core in self.cores]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.losses = [], []

    def _compare(self, core: AttentionCore, args: tuple, kwargs: dict, output: Tensor) -> Tensor:
        q, k, v = args[:3]  # (B, H, N, D) each, as MultiHeadAttention calls its core
        masks = {name: kwargs.get(name) for name in ("key_padding_mask", "causal", "query_padding_mask")}
        masks["causal"] = bool(masks["causal"])
        teacher = self.teachers[id(core)]
        with torch.no_grad():
            teacher_out = teacher(q, k, v, **masks)  # (B, H, N, D)
        if self.target == "outputs":
            self.losses.append(F.mse_loss(output.float(), teacher_out.float()))
        else:
            with torch.no_grad():
                rows = teacher.dense_attention_matrix(q, k, **masks)  # (B, H, N, N)
            self.losses.append(attention_row_kl(rows, core.dense_attention_matrix(q, k, **masks)))
        return teacher_out.to(output.dtype)

    def loss(self) -> Tensor:
        if not self.losses:
            raise RuntimeError("no attention core ran since the last loss()")
        total = torch.stack(self.losses).mean()
        self.losses = []
        return total


def fit_to_softmax(model: nn.Module, parameters: list[nn.Parameter], *, steps: int, lr: float, target: Target,
                   forward: Callable[[int], object], report: Callable[[int, float], None]) -> None:
    """Stage 1: `steps` Adam steps at constant `lr` on `parameters` only (everything else frozen meanwhile).
    `forward(step)` runs the model on the step's training batch; `report(step, loss)` sees each loss."""
    if not parameters:
        raise ValueError("no parameters to fit")
    frozen = {p: p.requires_grad for p in model.parameters()}
    chosen = {id(p) for p in parameters}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    try:
        with SoftmaxDistillation(model, target) as distillation:
            for step in range(1, steps + 1):
                forward(step)
                loss = distillation.loss()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                report(step, float(loss.detach()))
    finally:
        for p, requires_grad in frozen.items():
            p.requires_grad_(requires_grad)
