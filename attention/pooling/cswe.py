"""Constrained sliced-Wasserstein embedding pooling `cswe` (NaderiAlizadeh, Salehi, Liu, Kolouri,
"Constrained Sliced Wasserstein Embedding", arXiv 2506.02203).

The `swe` layer plus one constraint per slice: the slice's 1-D sorted matching of set and references,
lifted to the input space, must be cheap there. Per set and slice l (SWGG, Mahey et al. NeurIPS 2023)

    D_l(X) = sqrt(<‖x_i − r_j‖², Γ_l>),   Γ_l = P_xᵀ Q P_r

with Q the quantile coupling of Unif(n_b) and Unif(M) and P_x, P_r the sorting permutations of the
projections. d_l = batch mean of D_l; the constraint is d_l <= ε for every l. Training adds
Σ_l λ_l (d_l^soft − ε) (soft permutations, so θ and R get gradients); after each optimizer step
λ_l <- max(0, λ_l + η (d_l^hard − ε)) from the exact sorts. λ also weights the slices of the
per-reference summary through softmax(−λ / τ). The trainer reaches both through `lab/hooks.py`.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .base import register_pooling
from .sliced import RELAXATIONS, dense_coupling, quantile_coupling
from .swe import SlicedSets, SWEPooling

SOFT_COST_CHUNK_ELEMENTS = 1 << 24  # size of one (B, c, N, N + 2M) slice chunk: ~64 MB per tensor in float32


def squared_distances(x: Tensor, references: Tensor) -> Tensor:
    """(B, N, M) ‖x_i − r_j‖² (an n × M matrix, never n × n)."""
    cross = x @ references.T  # (B, N, M)
    return (x.square().sum(-1, keepdim=True) + references.square().sum(-1) - 2 * cross).clamp_min(0)


def hard_swgg(costs: Tensor, sliced: SlicedSets, coupling: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """(B, L) squared lifted cost <C, Γ_l> with exact sorts: a sum over the <= n_b + M − 1 coupling cells."""
    rows, cols, mass = coupling  # (B, K): rank in the set, rank in the references, mass
    num_refs, num_slices = sliced.ref_order.shape
    elements = sliced.set_order.gather(1, rows.unsqueeze(-1).expand(-1, -1, num_slices))  # (B, K, L)
    refs = sliced.ref_order[cols]  # (B, K, L)
    cell_costs = costs.flatten(1).gather(1, (elements * num_refs + refs).flatten(1)).view_as(elements)
    return (mass.unsqueeze(-1) * cell_costs).sum(1)  # (B, L)


def soft_swgg(costs: Tensor, sliced: SlicedSets, coupling: Tensor, padding_mask: Tensor | None,
              relaxation: str, temperature: float) -> Tensor:
    """(B, L) squared lifted cost <C, P̃_xᵀ Q P̃_r> with soft permutations, in chunks of slices.

    <C, P̃_xᵀ Q P̃_r> = Σ_kj (P̃_x C)[k, j] (Q P̃_r)[k, j]: memory O(chunk·B·N·(N + M)), recomputed in
    the backward pass (activation checkpointing) so the graph does not keep every chunk.
    """
    soft_permutation = RELAXATIONS[relaxation]
    batch, length, num_slices = sliced.set_projections.shape
    num_refs = sliced.ref_order.shape[0]
    chunk = max(1, SOFT_COST_CHUNK_ELEMENTS // (batch * length * (length + 2 * num_refs)))
    mask = None if padding_mask is None else padding_mask.unsqueeze(1)  # (B, 1, N)

    def chunk_cost(set_sorted: Tensor, set_values: Tensor, ref_sorted: Tensor, ref_values: Tensor) -> Tensor:
        set_perm = soft_permutation(set_sorted, set_values, mask, temperature)  # (B, c, N, N)
        ref_perm = soft_permutation(ref_sorted, ref_values, None, temperature)  # (c, M, M)
        moved_costs = (set_perm.flatten(1, 2) @ costs).view(batch, -1, length, num_refs)  # (B, c, N, M)
        coupled_refs = torch.einsum("bnm,cmj->bcnj", coupling, ref_perm)  # (B, c, N, M): Q P̃_r
        return (moved_costs * coupled_refs).sum((-2, -1))  # (B, c)

    parts = []
    for start in range(0, num_slices, chunk):
        part = slice(start, start + chunk)
        args = (sliced.set_sorted[..., part].transpose(1, 2), sliced.set_projections[..., part].transpose(1, 2),
                sliced.ref_sorted[:, part].T, sliced.ref_projections[:, part].T)  # (B, c, N) x2, (c, M) x2
        if torch.is_grad_enabled():
            parts.append(checkpoint(chunk_cost, *args, use_reentrant=False))
        else:
            parts.append(chunk_cost(*args))
    return torch.cat(parts, dim=1)  # (B, L)


@register_pooling("cswe")
class ConstrainedSWEPooling(SWEPooling):
    def __init__(self, dim: int, *, num_slices: int = 32, num_refs: int = 100,
                 output: Literal["concat", "flatten"] = "concat", tau: float = 1.0, dual_lr: float = 0.01,
                 eps: float | Literal["auto"] = "auto", auto_eps_fraction: float = 0.5,
                 auto_eps_batches: int = 10, relaxation: Literal["softsort"] = "softsort",
                 relaxation_temperature: float = 1.0):
        super().__init__(dim, num_slices=num_slices, num_refs=num_refs, output=output)
        if relaxation not in RELAXATIONS:
            raise ValueError(f"unknown relaxation '{relaxation}'; valid choices: {', '.join(RELAXATIONS)}")
        if eps != "auto" and (isinstance(eps, str) or eps < 0):
            raise ValueError(f"eps must be 'auto' or a number >= 0, got {eps!r}")
        for name, value in (("tau", tau), ("relaxation_temperature", relaxation_temperature),
                            ("auto_eps_fraction", auto_eps_fraction), ("auto_eps_batches", auto_eps_batches)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if dual_lr < 0:
            raise ValueError(f"dual_lr must be >= 0, got {dual_lr}")
        self.tau, self.dual_lr, self.relaxation, self.relaxation_temperature = tau, dual_lr, relaxation, \
            relaxation_temperature
        self.auto_eps = eps == "auto"
        self.auto_eps_fraction, self.auto_eps_batches = auto_eps_fraction, auto_eps_batches
        self.metric_prefix = "cswe"  # the owner may rename it when a model holds several cswe layers
        self.register_buffer("lambdas", torch.zeros(num_slices))  # (L,) dual variables
        self.register_buffer("eps", torch.tensor(0.0 if self.auto_eps else float(eps)))
        self.register_buffer("eps_calibration_sum", torch.tensor(0.0))
        self.register_buffer("eps_calibration_batches", torch.tensor(0))
        self.last_soft_costs: Tensor | None = None  # (L,) d^soft of the last training forward (with graph)
        self.last_hard_costs: Tensor | None = None  # (L,) d^hard of the last training forward

    def slice_weights(self) -> Tensor:
        return torch.softmax(-self.lambdas / self.tau, dim=0)  # (L,)

    def slice_costs(self, x: Tensor, padding_mask: Tensor | None, sliced: SlicedSets) -> tuple[Tensor, Tensor]:
        """Per-set lifted slice costs D_l (not squared): (soft (B, L) with gradients, hard (B, L) detached)."""
        batch, length, _ = x.shape
        coupling = quantile_coupling(sliced.counts, length, self.num_refs, x.dtype)
        costs = squared_distances(x, self.references.to(x.dtype))  # (B, N, M)
        with torch.no_grad():
            hard = hard_swgg(costs, sliced, coupling).clamp_min(0).sqrt()
        dense = dense_coupling(*coupling, length, self.num_refs)  # (B, N, M)
        soft = soft_swgg(costs, sliced, dense, padding_mask, self.relaxation, self.relaxation_temperature)
        return soft.clamp_min(1e-12).sqrt(), hard

    def observe_training_batch(self, x: Tensor, padding_mask: Tensor | None, sliced: SlicedSets) -> None:
        soft, hard = self.slice_costs(x, padding_mask, sliced)
        self.last_soft_costs, self.last_hard_costs = soft.mean(0), hard.mean(0)  # batch means d_l, (L,)

    def calibrating(self) -> bool:
        """True while `eps: auto` is still measuring costs (reads a buffer: call outside forward)."""
        return self.auto_eps and int(self.eps_calibration_batches) < self.auto_eps_batches

    # -- lab/hooks.py protocol ----------------------------------------------------------------
    def auxiliary_losses(self) -> dict[str, Tensor]:
        """Σ_l λ_l (d_l^soft − ε) of the last training forward (zero while λ = 0, e.g. calibrating ε)."""
        if not self.training or self.last_soft_costs is None:
            return {}
        penalty = (self.lambdas * (self.last_soft_costs - self.eps)).sum()
        return {f"{self.metric_prefix}/constraint": penalty}

    @torch.no_grad()
    def after_optimizer_step(self) -> dict[str, Tensor]:
        """Dual ascent on the last forward's hard costs (or ε calibration); returns scalars to log."""
        if not self.training or self.last_hard_costs is None:
            return {}
        hard, soft = self.last_hard_costs, self.last_soft_costs.detach()
        self.last_hard_costs = self.last_soft_costs = None
        prefix = self.metric_prefix
        metrics = {f"{prefix}/cost_hard_mean": hard.mean(), f"{prefix}/cost_soft_mean": soft.mean()}
        if self.calibrating():
            self.eps_calibration_sum += hard.mean()
            self.eps_calibration_batches += 1
            if not self.calibrating():
                self.eps.copy_(self.auto_eps_fraction * self.eps_calibration_sum / self.eps_calibration_batches)
            return metrics
        violation = hard - self.eps  # (L,)
        self.lambdas.add_(self.dual_lr * violation).clamp_(min=0)
        metrics.update({
            f"{prefix}/eps": self.eps.clone(),
            f"{prefix}/violation_mean": violation.clamp_min(0).mean(),
            f"{prefix}/violated_fraction": (violation > 0).float().mean(),
            f"{prefix}/lambda_mean": self.lambdas.mean(),
            f"{prefix}/lambda_max": self.lambdas.max(),
        })
        metrics.update({f"{prefix}/lambda/{index}": value for index, value in enumerate(self.lambdas.clone())})
        return metrics

    def extra_repr(self) -> str:
        eps = "auto" if self.auto_eps else f"{float(self.eps):g}"
        return (f"{super().extra_repr()}, tau={self.tau}, dual_lr={self.dual_lr}, eps={eps}, "
                f"relaxation={self.relaxation}(T={self.relaxation_temperature})")
