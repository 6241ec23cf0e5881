"""Constrained sliced-Wasserstein embedding pooling `cswe` (NaderiAlizadeh, Salehi, Liu, Kolouri,
"Constrained Sliced Wasserstein Embedding", arXiv 2506.02203).

The `swe` layer plus one constraint per slice: the slice's 1-D sorted matching of set and references,
lifted to the input space, must be cheap there. Per set and slice l (SWGG, Mahey et al. NeurIPS 2023)

    D_l(X) = sqrt(<‖x_i − r_j‖², Γ_l>),   Γ_l = P_xᵀ Q P_r

with Q the quantile coupling of Unif(n_b) and Unif(M) and P_x, P_r the sorting permutations of the
projections. d_l = batch mean of D_l; the constraint is d_l <= ε for every l. Training adds
Σ_l λ_l (d_l^soft − ε) (soft permutations, so θ and R get gradients); after each optimizer step
λ_l <- max(0, λ_l + η (d_l^hard − ε)) from the exact sorts, with d^hard the mean over every set of the
step: all its micro-batches (`trainer.accumulate`) and all data-parallel ranks, so λ stays identical on
every rank. λ also weights the slices of the per-reference summary through softmax(−λ / τ). The trainer
reaches both through `lab/hooks.py`, and clips the task loss's gradient only (the penalty's is added after).

ε, three ways:
- `eps_from: <run>`: the paper's calibration. ε = `eps_fraction` × the final mean hard slice cost of a
  trained unconstrained `swe` run (`hard_cost_record` in its checkpoint: the average over its last ~50
  steps). <run> is a checkpoint (`last.pt`), a run folder holding one, or a `runs/<name>` folder (its newest
  run). The paper pools a frozen backbone, so its ε refers to the same features; here the encoder trains,
  so use an swe run of the same task, model and budget.
- `eps: auto`: `eps_fraction` × the mean hard cost of the first `auto_eps_batches` steps of this run, from
  the untrained model (λ = 0 meanwhile); no other run needed, but the untrained cost is not the paper's.
- `eps: <number>`.

Relaxation of the sorts for d^soft: `softsort` (SoftSort with squared differences, the paper's first
version and the default here) or `lapsum` (LapSum, doubly stochastic, what the current official code uses,
with temperature α = 1 for proteins and 10 for images and point clouds).

Which parameters the constraint moves: the paper pooled features of a frozen backbone, so its constraint
shaped the slice directions θ and references R only. That is the default here too (the features enter the
costs detached); `constrain_inputs: true` lets the penalty's gradient reach the encoder as well, which can
then meet ε by contracting its features toward the references instead (on the protein task it did, and the
classifier fell to the majority class).

Cost: the hard costs take O(B (N + M) L C); the soft ones O(B N² L C) time but O(B N L C) memory with
SoftSort (O(B N² L) with LapSum). `soft_cost_sets: k` computes d^soft on the first k sets of each training
batch only: batches are drawn in random order, so that mean is an unbiased estimate of the batch mean (and
the penalty's gradient of the full one), at k/B of the cost; the hard costs, and so λ, use every set.
Diagnostics logged after each step, besides swe's costs: `cswe/cost_soft_mean`, `cswe/eps`,
`cswe/violation_mean`, `cswe/violated_fraction`, `cswe/lambda_mean`, `cswe/lambda_max`, `cswe/lambda/<l>`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import torch
from torch import Tensor

from lab.checkpoint import load_checkpoint
from lab.registry import Above, AtLeast, ConfigError

from .base import register_pooling
from .sliced import SlicedSets, dense_coupling, quantile_coupling
from .swe import SWEPooling
from .swgg import soft_swgg


@register_pooling("cswe")
class ConstrainedSWEPooling(SWEPooling):
    def __init__(self, dim: int, *, num_slices: Annotated[int, AtLeast(1)] = 32,
                 num_refs: Annotated[int, AtLeast(1)] = 100, output: Literal["concat", "flatten"] = "concat",
                 tau: Annotated[float, Above(0)] = 1.0, dual_lr: Annotated[float, AtLeast(0)] = 0.01,
                 eps: float | Literal["auto"] = "auto", eps_from: str | None = None,
                 eps_fraction: Annotated[float, Above(0)] = 0.5, auto_eps_batches: Annotated[int, AtLeast(1)] = 10,
                 relaxation: Literal["softsort", "lapsum"] = "softsort",
                 relaxation_temperature: Annotated[float, Above(0)] = 1.0,
                 soft_cost_sets: Annotated[int, AtLeast(0)] = 0, constrain_inputs: bool = False):
        super().__init__(dim, num_slices=num_slices, num_refs=num_refs, output=output)
        if eps != "auto" and eps < 0:
            raise ConfigError(f"pooling.eps must be 'auto' or a number >= 0, got {eps!r}")
        if eps_from is not None and eps != "auto":
            raise ConfigError(f"pooling: give eps ({eps}) or eps_from ({eps_from}), not both")
        self.tau, self.dual_lr, self.relaxation, self.relaxation_temperature = tau, dual_lr, relaxation, \
            relaxation_temperature
        self.auto_eps = eps == "auto" and eps_from is None
        self.eps_from, self.eps_fraction, self.auto_eps_batches = eps_from, eps_fraction, auto_eps_batches
        self.soft_cost_sets, self.constrain_inputs = soft_cost_sets, constrain_inputs
        if eps_from is not None:
            eps = eps_fraction * swe_run_cost(Path(eps_from))
        self.register_buffer("lambdas", torch.zeros(num_slices))  # (L,) dual variables
        self.register_buffer("eps", torch.tensor(0.0 if self.auto_eps else float(eps)))
        self.register_buffer("eps_calibration_sum", torch.tensor(0.0))
        self.register_buffer("eps_calibration_batches", torch.tensor(0))
        self.soft_costs: Tensor | None = None  # (L,) d^soft of the last training forward (with graph)

    def slice_weights(self) -> Tensor:
        return torch.softmax(-self.lambdas / self.tau, dim=0)  # (L,)

    def soft_slice_costs(self, x: Tensor, padding_mask: Tensor | None, sliced: SlicedSets) -> Tensor:
        """(B, L) per-set lifted slice costs D_l (not squared) with soft permutations, with gradients."""
        length = x.shape[1]
        coupling = dense_coupling(*quantile_coupling(sliced.counts, length, self.num_refs, x.dtype), length,
                                  self.num_refs)  # (B, N, M)
        soft = soft_swgg(x, self.references.to(x.dtype), sliced, coupling, padding_mask, self.relaxation,
                         self.relaxation_temperature)
        return soft.clamp_min(1e-12).sqrt()

    def observe_training_batch(self, x: Tensor, padding_mask: Tensor | None, sliced: SlicedSets) -> None:
        """swe's hard costs over the whole batch, plus the soft ones over its first `soft_cost_sets` sets."""
        super().observe_training_batch(x, padding_mask, sliced)
        count = self.soft_cost_sets or x.shape[0]
        soft_x, soft_sets = x[:count], sliced.first_sets(count)
        if not self.constrain_inputs:  # the penalty's gradient reaches θ and R only
            soft_x = soft_x.detach()
            soft_sets = soft_sets.reprojected(soft_x)
        soft = self.soft_slice_costs(soft_x, None if padding_mask is None else padding_mask[:count], soft_sets)
        self.soft_costs = soft.mean(0)  # (L,)
        self.step_means.add("soft", soft.sum(0), len(soft))

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
        if not self.training or self.soft_costs is None:
            return {}
        penalty = (self.lambdas * (self.soft_costs - self.eps)).sum()
        return {f"{self.metric_prefix}/constraint": penalty}

    @torch.no_grad()
    def after_optimizer_step(self) -> dict[str, Tensor]:
        """Dual ascent (or ε calibration) on the step's mean hard costs; returns scalars to log."""
        means = self.step_means.reduce()
        self.soft_costs = None  # releases the last forward's graph
        if not means:
            return {}
        hard, prefix = means["hard"], self.metric_prefix
        metrics = {**self.record_costs(means), f"{prefix}/cost_soft_mean": means["soft"].mean()}
        if self.calibrating():
            self.eps_calibration_sum += hard.mean()
            self.eps_calibration_batches += 1
            if not self.calibrating():
                self.eps.copy_(self.eps_fraction * self.eps_calibration_sum / self.eps_calibration_batches)
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
        source = f" (from {self.eps_from})" if self.eps_from else ""
        return (f"{super().extra_repr()}, tau={self.tau}, dual_lr={self.dual_lr}, eps={eps}{source}, "
                f"relaxation={self.relaxation}(T={self.relaxation_temperature}), "
                f"soft_cost_sets={self.soft_cost_sets}, constrain_inputs={self.constrain_inputs}")


def swe_run_cost(source: Path) -> float:
    """The recorded final mean hard slice cost of a trained `swe` run: a checkpoint, a run folder holding
    last.pt, or runs/<name> (the newest of its runs that used pooling=swe: mean, swe and cswe runs of one
    task share a run name)."""
    if not source.exists():
        raise ConfigError(f"pooling.eps_from: {source} does not exist")
    if source.is_dir() and not (source / "last.pt").exists():
        candidates = sorted(source.glob("*/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        states = ((path, read_checkpoint(path)) for path in candidates)
        found = next(((path, state) for path, state in states if pooling_of(state) == "swe"), None)
        if found is None:
            raise ConfigError(f"pooling.eps_from: none of the {len(candidates)} runs in {source} used pooling=swe")
        path, state = found
    else:
        path = source / "last.pt" if source.is_dir() else source
        state = read_checkpoint(path)
        if pooling_of(state) != "swe":
            raise ConfigError(f"pooling.eps_from: {path} is a run of pooling '{pooling_of(state)}'; it must be an "
                              "unconstrained swe run (pooling=swe)")
    records = {name: value for name, value in state["model"].items() if name.endswith("hard_cost_record")}
    if len(records) != 1:
        raise ConfigError(f"pooling.eps_from: {path} holds {len(records)} swe cost records (want one)"
                          + (f": {', '.join(records)}" if records else "; it predates cost recording"))
    total, weight = next(iter(records.values())).tolist()
    if weight <= 0:
        raise ConfigError(f"pooling.eps_from: the swe run in {path} has not taken a training step")
    return total / weight


def read_checkpoint(path: Path) -> dict:
    try:
        return load_checkpoint(path)
    except ConfigError as error:  # its one line, said of this option
        raise ConfigError(f"pooling.eps_from: cannot load it: {error}") from None


def pooling_of(state: dict) -> str | None:
    return ((state.get("config") or {}).get("pooling") or {}).get("name")
