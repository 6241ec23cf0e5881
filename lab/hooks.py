"""How any module takes part in training without the trainer knowing it by name.

A module anywhere in the model may define either or both of:

    def auxiliary_losses(self) -> dict[str, Tensor]
        Called after every training forward pass. Each value is a scalar tensor from that forward
        pass; the trainer adds their gradients to the task loss's (see `AuxiliaryGradients`) and
        logs each as `aux/<name>`.

    def after_optimizer_step(self) -> dict[str, float | Tensor]
        Called after every optimizer step (e.g. a dual-variable update of a constrained layer).
        The returned scalars are logged as metrics under the names given. Statistics gathered over
        the micro-batches of an accumulated step and over data-parallel ranks: `StepMeans`.

Constrained poolings (cswe) use both; the trainer only calls `collect_auxiliary_losses`,
`AuxiliaryGradients` and `run_after_step_hooks`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def collect_auxiliary_losses(model: nn.Module) -> dict[str, Tensor]:
    losses: dict[str, Tensor] = {}
    for module in model.modules():
        hook = getattr(module, "auxiliary_losses", None)
        if callable(hook):
            for name, value in hook().items():
                if name in losses:
                    raise ValueError(f"two modules contribute an auxiliary loss named '{name}'")
                losses[name] = value
    return losses


def run_after_step_hooks(model: nn.Module) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for module in model.modules():
        hook = getattr(module, "after_optimizer_step", None)
        if callable(hook):
            for name, value in (hook() or {}).items():
                metrics[name] = float(value)
    return metrics


def sum_across_ranks(values: Tensor) -> Tensor:
    """The element-wise sum of `values` over the data-parallel ranks (itself in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    total = values.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def mean_across_ranks(values: Tensor) -> Tensor:
    """The element-wise mean of `values` over the data-parallel ranks (itself in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    return sum_across_ranks(values) / dist.get_world_size()


class StepMeans:
    """Means of per-example statistics over every micro-batch of an optimizer step and every rank.

        means = StepMeans()
        means.add("cost", costs.sum(0), len(costs))   # each training forward: sums and their count
        means.reduce()                                  # after the step: {"cost": Σ sums / Σ counts}

    `reduce` makes one all-reduce (of every sum and count at once) and starts the next step afresh; it
    returns {} when nothing was added. Every rank must add the same names, in the same shapes.
    """

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, float] = {}

    def add(self, name: str, total: Tensor, count: int) -> None:
        total = total.detach()
        self.sums[name] = total if name not in self.sums else self.sums[name] + total
        self.counts[name] = self.counts.get(name, 0) + count

    def reduce(self) -> dict[str, Tensor]:
        if not self.sums:
            return {}
        names = list(self.sums)
        flat = torch.cat([self.sums[name].reshape(-1) for name in names])
        counts = flat.new_tensor([self.counts[name] for name in names])
        totals = sum_across_ranks(torch.cat([flat, counts]))
        means, offset = {}, 0
        for index, name in enumerate(names):
            size = self.sums[name].numel()
            count = totals[len(flat) + index]
            means[name] = (totals[offset:offset + size] / count).view_as(self.sums[name])
            offset += size
        self.sums, self.counts = {}, {}
        return means


class AuxiliaryGradients:
    """Keeps the gradients of auxiliary losses out of gradient clipping.

    The optimizer receives clip(Σ ∇task) + Σ ∇aux (sums over the micro-batches of a step): a large
    penalty, e.g. a constraint with a large multiplier, must not inflate the clipped norm and so
    shrink the task loss's gradient everywhere else (the encoder, the head). Per micro-batch,
    `backward` takes the auxiliary gradients with `torch.autograd.grad` into a side buffer, then
    back-propagates the task loss into `.grad` as usual (where DDP averages it over ranks);
    after clipping, `add_to_gradients` averages the buffer over ranks and adds it to `.grad`.
    """

    def __init__(self, model: nn.Module):
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.pending: list[Tensor | None] = [None] * len(self.parameters)

    def backward(self, task_loss: Tensor, auxiliary: dict[str, Tensor], scale: float = 1.0) -> None:
        """Back-propagate `scale` × the task loss into .grad and `scale` × Σ auxiliary into the buffer."""
        if auxiliary:
            penalty = sum(auxiliary.values()) * scale
            grads = torch.autograd.grad(penalty, self.parameters, retain_graph=True, allow_unused=True)
            for index, grad in enumerate(grads):
                if grad is not None:
                    held = self.pending[index]
                    self.pending[index] = grad if held is None else held + grad
        (task_loss * scale).backward()

    def add_to_gradients(self) -> float | None:
        """Add the buffered gradients (rank-averaged) to .grad and empty the buffer; returns their norm."""
        held = [(p, g) for p, g in zip(self.parameters, self.pending) if g is not None]
        self.pending = [None] * len(self.parameters)
        if not held:
            return None
        flat = mean_across_ranks(torch.cat([g.reshape(-1) for _, g in held]))
        offset = 0
        for param, grad in held:
            part = flat[offset:offset + grad.numel()].view_as(grad)
            offset += grad.numel()
            param.grad = part.clone() if param.grad is None else param.grad.add_(part)
        return float(flat.norm())
