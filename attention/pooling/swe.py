"""Sliced-Wasserstein embedding pooling `swe` (Naderializadeh et al., NeurIPS 2021, "Pooling by
Sliced-Wasserstein Embedding"), in the form used by Constrained SWE (NaderiAlizadeh et al. 2025):
references live in input space and the output concatenates a per-reference and a per-slice summary.

    X θᵀ (B, N, L) -> sort each slice over the valid elements -> resample at M quantiles (B, L, M)
    E[b, l, m] = sorted(R θᵀ)[l, m] - Xq[b, l, m]
    concat:  Σ_l w_l E[:, l, :]  ⊕  Σ_m a_m E[:, :, m]     (M + L dims; w uniform here, see cswe.py)
    flatten: E as one M·L vector

θ are L unit-norm slice directions (orthogonal init, normalised in forward), R ∈ R^{M×C} learned
reference points (randn init), a learned reference weights.

Training forwards also measure, without gradients, each slice's lifted cost D_l with exact sorts and the
independent-pairing cost (`swgg.py`; O(B (N + M) L C)), averaged over the micro-batches of a step and the
ranks, logged after each optimizer step as `<prefix>/cost_hard_mean`, `<prefix>/cost_spread` (max − min
over the slices: near 0, the slice directions barely matter) and `<prefix>/cost_independent`. The buffer
`hard_cost_record` keeps an exponential average of the mean hard cost (weight 0.98 per step, i.e. the last
~50 steps): the "final cost of the unconstrained SWE" from which cswe's `eps_from` sets ε.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attention.base import at_least_float32
from lab.hooks import StepMeans
from lab.registry import AtLeast

from .base import Pooling, register_pooling
from .sliced import SlicedSets, quantile_coupling, quantile_resample, sort_valid_first, valid_counts
from .swgg import hard_swgg, independent_pairing_cost, squared_distances

COST_RECORD_DECAY = 0.98  # hard_cost_record: weight of a step's cost falls by this factor per later step


@register_pooling("swe")
class SWEPooling(Pooling):
    def __init__(self, dim: int, *, num_slices: Annotated[int, AtLeast(1)] = 32,
                 num_refs: Annotated[int, AtLeast(1)] = 100, output: Literal["concat", "flatten"] = "concat"):
        super().__init__(dim)
        self.num_slices, self.num_refs, self.output = num_slices, num_refs, output
        self.slice_directions = nn.Parameter(nn.init.orthogonal_(torch.empty(num_slices, dim)))  # (L, C)
        self.references = nn.Parameter(torch.randn(num_refs, dim))  # (M, C)
        self.ref_weights = nn.Linear(num_refs, 1, bias=False) if output == "concat" else None
        self.output_dim = num_refs + num_slices if output == "concat" else num_refs * num_slices
        self.metric_prefix = self.registry_name  # the owner may rename it when a model holds several such layers
        self.register_buffer("hard_cost_record", torch.zeros(2))  # [Σ_t w_t cost_t, Σ_t w_t], exponential w
        self.step_means = StepMeans()  # this step's cost sums over its micro-batches

    def slice_weights(self) -> Tensor:
        """(L,) weights of the slices in the per-reference summary; uniform without a constraint."""
        return self.slice_directions.new_full((self.num_slices,), 1.0 / self.num_slices)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, N, C), padding_mask: (B, N) True = padding -> (B, output_dim). Computed in float32."""
        with torch.autocast(x.device.type, enabled=False):
            x = self.float_sets(x, padding_mask)
            sliced = self.slice_sets(x, padding_mask)
            if self.training:
                self.observe_training_batch(x, padding_mask, sliced)
            return self.embed(sliced)

    @staticmethod
    def float_sets(x: Tensor, padding_mask: Tensor | None) -> Tensor:
        """x in (at least) float32 with padded rows zeroed: they never enter the arithmetic, so junk can't leak."""
        x = at_least_float32(x)
        return x if padding_mask is None else x.masked_fill(padding_mask.unsqueeze(-1), 0.0)

    def slice_sets(self, x: Tensor, padding_mask: Tensor | None) -> SlicedSets:
        batch, length, _ = x.shape
        if length < 2:
            raise ValueError(f"{self.registry_name} pooling needs sets of at least 2 elements, got N = {length}")
        counts = valid_counts(padding_mask, batch, length, x.device)
        if padding_mask is not None:  # device-side check: no host sync
            torch._assert_async(counts.min() >= 2, f"{self.registry_name} pooling needs at least 2 valid "
                                "elements in every set")
        directions = F.normalize(self.slice_directions, dim=1).to(x.dtype)  # (L, C)
        set_projections = x @ directions.T  # (B, N, L)
        set_sorted, set_order = sort_valid_first(set_projections, padding_mask)
        ref_projections = self.references.to(x.dtype) @ directions.T  # (M, L)
        ref_sorted, ref_order = ref_projections.sort(dim=0)
        return SlicedSets(directions, set_projections, set_sorted, set_order, counts,
                          ref_projections, ref_sorted, ref_order)

    def embed(self, sliced: SlicedSets) -> Tensor:
        quantiles = quantile_resample(sliced.set_sorted, sliced.counts, self.num_refs)  # (B, L, M)
        displacement = sliced.ref_sorted.T.unsqueeze(0) - quantiles  # (B, L, M)
        if self.output == "flatten":
            return displacement.flatten(1)  # (B, L*M)
        per_ref = torch.einsum("blm,l->bm", displacement, self.slice_weights().to(displacement.dtype))  # (B, M)
        per_slice = self.ref_weights(displacement).squeeze(-1)  # (B, L)
        return torch.cat([per_ref, per_slice], dim=-1)  # (B, M + L)

    # -- cost monitoring --------------------------------------------------------------------------
    def hard_slice_costs(self, x: Tensor, sliced: SlicedSets) -> Tensor:
        """(B, L) per-set lifted slice costs D_l (not squared) with exact sorts, detached."""
        coupling = quantile_coupling(sliced.counts, x.shape[1], self.num_refs, x.dtype)
        with torch.no_grad():
            costs = squared_distances(x, self.references.to(x.dtype))  # (B, N, M)
            return hard_swgg(costs, sliced, coupling).clamp_min(0).sqrt()

    def observe_training_batch(self, x: Tensor, padding_mask: Tensor | None, sliced: SlicedSets) -> None:
        """Called in training forwards: add this micro-batch's costs to the step's sums."""
        hard = self.hard_slice_costs(x, sliced)  # (B, L)
        with torch.no_grad():
            independent = independent_pairing_cost(x, self.references.to(x.dtype), sliced.counts)  # (B,)
        self.step_means.add("hard", hard.sum(0), len(hard))
        self.step_means.add("independent", independent.sum(), len(hard))

    def record_costs(self, means: dict[str, Tensor]) -> dict[str, Tensor]:
        """Update the cost record from one step's means; returns the cost metrics to log."""
        hard = means["hard"]  # (L,)
        self.hard_cost_record.mul_(COST_RECORD_DECAY).add_(torch.stack([hard.mean(), torch.ones_like(hard[0])]))
        prefix = self.metric_prefix
        return {f"{prefix}/cost_hard_mean": hard.mean(), f"{prefix}/cost_spread": hard.max() - hard.min(),
                f"{prefix}/cost_independent": means["independent"]}

    @torch.no_grad()
    def after_optimizer_step(self) -> dict[str, Tensor]:
        """lab/hooks.py protocol: log (and record) the step's costs."""
        means = self.step_means.reduce()
        return self.record_costs(means) if means else {}

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_slices={self.num_slices}, num_refs={self.num_refs}, output={self.output}"
