"""How any module takes part in training without the trainer knowing it by name.

A module anywhere in the model may define either or both of:

    def auxiliary_losses(self) -> dict[str, Tensor]
        Called after every training forward pass. Each value is a scalar tensor from that forward
        pass; the trainer adds their sum to the task loss and logs each as `aux/<name>`.

    def after_optimizer_step(self) -> dict[str, float | Tensor]
        Called after every optimizer step (e.g. a dual-variable update of a constrained layer).
        The returned scalars are logged as metrics under the names given.

Constrained poolings (cswe) use both; the trainer only calls `collect_auxiliary_losses` and
`run_after_step_hooks`.
"""
from __future__ import annotations

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
