"""Sliced-Wasserstein embedding pooling `swe` (Naderializadeh et al., NeurIPS 2021, "Pooling by
Sliced-Wasserstein Embedding"), in the form used by Constrained SWE (NaderiAlizadeh et al. 2025):
references live in input space and the output concatenates a per-reference and a per-slice summary.

    X θᵀ (B, N, L) -> sort each slice over the valid elements -> resample at M quantiles (B, L, M)
    E[b, l, m] = sorted(R θᵀ)[l, m] - Xq[b, l, m]
    concat:  Σ_l w_l E[:, l, :]  ⊕  Σ_m a_m E[:, :, m]     (M + L dims; w uniform here, see cswe.py)
    flatten: E as one M·L vector

θ are L unit-norm slice directions (orthogonal init, normalised in forward), R ∈ R^{M×C} learned
reference points (randn init), a learned reference weights.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attention.base import at_least_float32
from lab.registry import ConfigError

from .base import Pooling, register_pooling
from .sliced import quantile_resample, sort_valid_first, valid_counts


@dataclass
class SlicedSets:
    """A batch of sets and the references, projected on the slices and sorted."""

    directions: Tensor  # (L, C) unit rows
    set_projections: Tensor  # (B, N, L)
    set_sorted: Tensor  # (B, N, L) ascending, valid elements first
    set_order: Tensor  # (B, N, L) index of the element of rank k in slice l
    counts: Tensor  # (B,) valid elements per set
    ref_projections: Tensor  # (M, L)
    ref_sorted: Tensor  # (M, L) ascending
    ref_order: Tensor  # (M, L)

    def reprojected(self, x: Tensor) -> SlicedSets:
        """The same slicing (orders kept) with the set projections recomputed from x, e.g. x detached."""
        projections = x @ self.directions.T  # (B, N, L)
        return dataclasses.replace(self, set_projections=projections,
                                   set_sorted=projections.gather(1, self.set_order))

    def first_sets(self, count: int) -> SlicedSets:
        """The same slicing restricted to the first `count` sets of the batch."""
        return dataclasses.replace(self, set_projections=self.set_projections[:count],
                                   set_sorted=self.set_sorted[:count], set_order=self.set_order[:count],
                                   counts=self.counts[:count])


@register_pooling("swe")
class SWEPooling(Pooling):
    def __init__(self, dim: int, *, num_slices: int = 32, num_refs: int = 100,
                 output: Literal["concat", "flatten"] = "concat"):
        super().__init__(dim)
        if num_slices < 1 or num_refs < 1:
            raise ConfigError(f"pooling.num_slices and pooling.num_refs must be >= 1, got {num_slices} and "
                              f"{num_refs}")
        self.num_slices, self.num_refs, self.output = num_slices, num_refs, output
        self.slice_directions = nn.Parameter(nn.init.orthogonal_(torch.empty(num_slices, dim)))  # (L, C)
        self.references = nn.Parameter(torch.randn(num_refs, dim))  # (M, C)
        self.ref_weights = nn.Linear(num_refs, 1, bias=False) if output == "concat" else None
        self.output_dim = num_refs + num_slices if output == "concat" else num_refs * num_slices

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

    def observe_training_batch(self, x: Tensor, padding_mask: Tensor | None, sliced: SlicedSets) -> None:
        """Called in training forwards; the unconstrained layer has nothing to measure."""

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_slices={self.num_slices}, num_refs={self.num_refs}, output={self.output}"
