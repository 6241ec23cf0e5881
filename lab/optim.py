"""Optimizer and learning-rate schedule: AdamW (or Adam) with linear warm-up, then cosine decay or
fairseq's inverse square root (lr·√(warmup / step), the Transformer recipe for IWSLT'14)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainerConfig


def build_optimizer(model: nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    """Weight decay only on matrices of Linear/Conv layers; none on biases, norms, embeddings, tokens."""
    decay, no_decay = [], []
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            decayed = name == "weight" and isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))
            (decay if decayed else no_decay).append(param)
    betas = (0.9, cfg.beta2)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(decay + no_decay, lr=cfg.lr, betas=betas)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)


def warmup_length(total_steps: int, cfg: TrainerConfig) -> int:
    if cfg.warmup_steps:
        return cfg.warmup_steps
    return max(1, round(cfg.warmup_fraction * total_steps)) if cfg.warmup_fraction > 0 else 0


def lr_at(step: int, total_steps: int, cfg: TrainerConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of a `total_steps` schedule."""
    warmup = warmup_length(total_steps, cfg)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * math.sqrt(max(1, warmup) / (step + 1))
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = cfg.min_lr_fraction * cfg.lr
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
