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

Which parameters the constraint moves: the paper pooled features of a frozen backbone, so its constraint
shaped the slice directions θ and references R only. That is the default here too (the features enter the
costs detached); `constrain_inputs: true` lets the penalty's gradient reach the encoder as well, which can
then meet ε by contracting its features toward the references instead (on the protein task it did, and the
classifier fell to the majority class).

Cost: the hard costs take O(B (N + M) L C); the soft ones O(B N² L C) time (SoftSort is dense) but O(B N L C)
memory. `soft_cost_sets: k` computes d^soft on the first k sets of each training batch only: batches are
drawn in random order, so that mean is an unbiased estimate of the batch mean (and the penalty's gradient
of the full one), at k/B of the cost; the hard costs, and so λ, always use the whole batch.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lab.registry import ConfigError

from .base import register_pooling
from .sliced import RELAXATIONS, dense_coupling, quantile_coupling
from .swe import SlicedSets, SWEPooling


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


def soft_swgg(x: Tensor, references: Tensor, sliced: SlicedSets, coupling: Tensor, padding_mask: Tensor | None,
              relaxation: str, temperature: float) -> Tensor:
    """(B, L) squared lifted cost <C, P̃_xᵀ Q P̃_r> with soft permutations, without an n × n or n × n × M tensor.

    With C = ‖x_i‖² + ‖r_j‖² − 2 x_i·r_j, the augmented points x̃ = [x, ‖x‖²], r̃ = [r, ‖r‖²], the soft-sorted
    set S = P̃_x X̃ and the references matched to its ranks T = Q P̃_r R̃ (both (N, C+1) per slice):
        <C, Γ> = Σ_k (Q1)_k S[k, C] + Σ_k T[k, C] − 2 Σ_k S[k, :C]·T[k, :C].
    x: (B, N, C) (padded rows zero), references (M, C), coupling Q: (B, N, M) dense.
    """
    soft_permutation_product = RELAXATIONS[relaxation]
    augmented_set = torch.cat([x, x.square().sum(-1, keepdim=True)], dim=-1)  # (B, N, C+1)
    augmented_refs = torch.cat([references, references.square().sum(-1, keepdim=True)], dim=-1)  # (M, C+1)
    mask = None if padding_mask is None else padding_mask.unsqueeze(1)  # (B, 1, N)
    sorted_set = soft_permutation_product(sliced.set_sorted.transpose(1, 2), sliced.set_projections.transpose(1, 2),
                                          mask, temperature, augmented_set.unsqueeze(1))  # (B, L, N, C+1)
    sorted_refs = soft_permutation_product(sliced.ref_sorted.T.unsqueeze(0), sliced.ref_projections.T.unsqueeze(0),
                                           None, temperature, augmented_refs)[0]  # (L, M, C+1)
    matched_refs = torch.einsum("bnm,lmc->blnc", coupling, sorted_refs)  # (B, L, N, C+1)
    squared_norms = (coupling.sum(-1).unsqueeze(1) * sorted_set[..., -1]).sum(-1) + matched_refs[..., -1].sum(-1)
    cross = (sorted_set[..., :-1] * matched_refs[..., :-1]).sum((-2, -1))  # (B, L)
    return squared_norms - 2 * cross


@register_pooling("cswe")
class ConstrainedSWEPooling(SWEPooling):
    def __init__(self, dim: int, *, num_slices: int = 32, num_refs: int = 100,
                 output: Literal["concat", "flatten"] = "concat", tau: float = 1.0, dual_lr: float = 0.01,
                 eps: float | Literal["auto"] = "auto", auto_eps_fraction: float = 0.5,
                 auto_eps_batches: int = 10, relaxation: Literal["softsort"] = "softsort",
                 relaxation_temperature: float = 1.0, soft_cost_sets: int = 0, constrain_inputs: bool = False):
        super().__init__(dim, num_slices=num_slices, num_refs=num_refs, output=output)
        if eps != "auto" and eps < 0:
            raise ConfigError(f"pooling.eps must be 'auto' or a number >= 0, got {eps!r}")
        for name, value in (("tau", tau), ("relaxation_temperature", relaxation_temperature),
                            ("auto_eps_fraction", auto_eps_fraction), ("auto_eps_batches", auto_eps_batches)):
            if value <= 0:
                raise ConfigError(f"pooling.{name} must be > 0, got {value}")
        if dual_lr < 0:
            raise ConfigError(f"pooling.dual_lr must be >= 0, got {dual_lr}")
        if soft_cost_sets < 0:
            raise ConfigError(f"pooling.soft_cost_sets must be >= 0 (0 = every set of the batch), "
                              f"got {soft_cost_sets}")
        self.tau, self.dual_lr, self.relaxation, self.relaxation_temperature = tau, dual_lr, relaxation, \
            relaxation_temperature
        self.auto_eps = eps == "auto"
        self.auto_eps_fraction, self.auto_eps_batches = auto_eps_fraction, auto_eps_batches
        self.soft_cost_sets, self.constrain_inputs = soft_cost_sets, constrain_inputs
        self.metric_prefix = "cswe"  # the owner may rename it when a model holds several cswe layers
        self.register_buffer("lambdas", torch.zeros(num_slices))  # (L,) dual variables
        self.register_buffer("eps", torch.tensor(0.0 if self.auto_eps else float(eps)))
        self.register_buffer("eps_calibration_sum", torch.tensor(0.0))
        self.register_buffer("eps_calibration_batches", torch.tensor(0))
        self.last_soft_costs: Tensor | None = None  # (L,) d^soft of the last training forward (with graph)
        self.last_hard_costs: Tensor | None = None  # (L,) d^hard of the last training forward

    def slice_weights(self) -> Tensor:
        return torch.softmax(-self.lambdas / self.tau, dim=0)  # (L,)

    def hard_slice_costs(self, x: Tensor, sliced: SlicedSets) -> Tensor:
        """(B, L) per-set lifted slice costs D_l (not squared) with exact sorts, detached."""
        coupling = quantile_coupling(sliced.counts, x.shape[1], self.num_refs, x.dtype)
        with torch.no_grad():
            costs = squared_distances(x, self.references.to(x.dtype))  # (B, N, M)
            return hard_swgg(costs, sliced, coupling).clamp_min(0).sqrt()

    def soft_slice_costs(self, x: Tensor, padding_mask: Tensor | None, sliced: SlicedSets) -> Tensor:
        """(B, L) per-set lifted slice costs D_l (not squared) with soft permutations, with gradients."""
        length = x.shape[1]
        coupling = dense_coupling(*quantile_coupling(sliced.counts, length, self.num_refs, x.dtype), length,
                                  self.num_refs)  # (B, N, M)
        soft = soft_swgg(x, self.references.to(x.dtype), sliced, coupling, padding_mask, self.relaxation,
                         self.relaxation_temperature)
        return soft.clamp_min(1e-12).sqrt()

    def observe_training_batch(self, x: Tensor, padding_mask: Tensor | None, sliced: SlicedSets) -> None:
        """Batch means d_l: hard over the whole batch, soft over its first `soft_cost_sets` sets (0 = all)."""
        count = self.soft_cost_sets or x.shape[0]
        soft_x, soft_sets = x[:count], sliced.first_sets(count)
        if not self.constrain_inputs:  # the penalty's gradient reaches θ and R only
            soft_x = soft_x.detach()
            soft_sets = soft_sets.reprojected(soft_x)
        soft = self.soft_slice_costs(soft_x, None if padding_mask is None else padding_mask[:count], soft_sets)
        self.last_soft_costs, self.last_hard_costs = soft.mean(0), self.hard_slice_costs(x, sliced).mean(0)  # (L,)

    def calibrating(self) -> bool:
        """True while `eps: auto` is still measuring costs (reads a buffer: call outside forward)."""
        return self.auto_eps and int(self.eps_calibration_batches) < self.auto_eps_batches

    @torch.no_grad()
    def slice_diagnostics(self, x: Tensor, padding_mask: Tensor | None = None) -> dict[str, Tensor]:
        """(L,) vectors for lab/diagnostics.py on the sets x (B, N, C): the slice weights softmax(−λ/τ), the
        dual variables λ, and the violation d_l − ε of the hard lifted costs averaged over these sets."""
        with torch.autocast(x.device.type, enabled=False):
            x = self.float_sets(x, padding_mask)
            costs = self.hard_slice_costs(x, self.slice_sets(x, padding_mask)).mean(0)  # (L,)
        return {"weight": self.slice_weights(), "lambda": self.lambdas.clone(), "violation": costs - self.eps}

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
                f"relaxation={self.relaxation}(T={self.relaxation_temperature}), "
                f"soft_cost_sets={self.soft_cost_sets}, constrain_inputs={self.constrain_inputs}")
