"""1-D optimal-transport helpers for sliced poolings (swe, cswe): masked sorts, quantile resampling,
the quantile coupling of two uniform measures, and soft permutations.

Variable-length sets are handled by masks only: padded elements are ordered after the valid ones by
a stable second sort on the padding flag, and no arithmetic ever reads them (no sentinel values).
Soft permutations: SoftSort (Prillo & Eisenschlos, ICML 2020) with squared differences, or LapSum
(lapsum.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .lapsum import lapsum_apply


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


def valid_counts(padding_mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """(B,) long: number of valid elements per set."""
    if padding_mask is None:
        return torch.full((batch,), length, dtype=torch.long, device=device)
    return (~padding_mask).sum(1)


def sort_valid_first(values: Tensor, padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Sort (B, N, L) along N ascending over the valid elements, padded elements after them.

    Returns (sorted values, order): order[b, k, l] is the index of the element of rank k in slice l.
    """
    sorted_values, order = values.sort(dim=1)  # (B, N, L)
    if padding_mask is None:
        return sorted_values, order
    padding_in_order = padding_mask.to(torch.uint8).unsqueeze(-1).expand_as(values).gather(1, order)
    valid_first = padding_in_order.sort(dim=1, stable=True).indices  # keeps the value order within groups
    order = order.gather(1, valid_first)
    return values.gather(1, order), order


def quantile_resample(sorted_values: Tensor, counts: Tensor, num_points: int) -> Tensor:
    """Resample each set's sorted valid values at `num_points` quantiles.

    The n_b valid values of set b sit at positions i / (n_b + 1), i = 1..n_b; they are read at the grid
    t_j = j / (M + 1), j = 1..M, by linear interpolation with linear extrapolation at both ends.
    sorted_values: (B, N, L) valid-first; counts: (B,) with every n_b >= 2. Returns (B, L, M).
    """
    grid = torch.arange(1, num_points + 1, device=sorted_values.device, dtype=sorted_values.dtype)
    grid = grid / (num_points + 1)  # (M,)
    n = counts.to(sorted_values.dtype)[:, None]  # (B, 1)
    position = grid[None] * (n + 1) - 1  # (B, M) fractional index into the valid values
    lower = position.floor().long().clamp(min=0)
    lower = torch.minimum(lower, counts[:, None] - 2)  # (B, M) in [0, n_b - 2]
    fraction = (position - lower.to(position.dtype)).unsqueeze(-1)  # (B, M, 1), < 0 or > 1 extrapolates
    index = lower.unsqueeze(-1).expand(-1, -1, sorted_values.shape[2])  # (B, M, L)
    low_values = sorted_values.gather(1, index)
    high_values = sorted_values.gather(1, index + 1)
    resampled = low_values + fraction * (high_values - low_values)  # (B, M, L)
    return resampled.transpose(1, 2)  # (B, L, M)


def quantile_coupling(counts: Tensor, max_rows: int, num_cols: int,
                      dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """The non-zeros of the north-west-corner (1-D optimal) plan between Unif(n_b) and Unif(M).

    Rank i of the set covers [i/n_b, (i+1)/n_b), rank j of the references [j/M, (j+1)/M); the plan
    gives each pair the length of the overlap. In units of 1/(n_b M) the breakpoints are the integers
    i*M and j*n_b, so merging them (one sort) lists the <= n_b + M - 1 non-zero cells in order.
    Returns (rows, cols, mass), each (B, max_rows + M); cells past the end have zero mass.
    """
    device = counts.device
    row_ends = torch.arange(1, max_rows + 1, device=device)[None]  # (1, N)
    row_ends = torch.minimum(row_ends, counts[:, None]) * num_cols  # (B, N) repeats end at n_b*M
    col_ends = torch.arange(1, num_cols + 1, device=device)[None] * counts[:, None]  # (B, M)
    ends = torch.cat([row_ends, col_ends], dim=1).sort(dim=1).values  # (B, K) with K = N + M
    starts = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], dim=1)
    total = (counts * num_cols)[:, None]  # (B, 1)
    mass = (ends - starts).to(dtype) / total.to(dtype)  # (B, K)
    rows = torch.minimum(starts // num_cols, counts[:, None] - 1)
    cols = (starts // counts[:, None]).clamp(max=num_cols - 1)
    return rows, cols, mass


def dense_coupling(rows: Tensor, cols: Tensor, mass: Tensor, max_rows: int, num_cols: int) -> Tensor:
    """(B, N, M) dense quantile coupling from `quantile_coupling`'s cells (n x M, never n x n)."""
    flat = torch.zeros(rows.shape[0], max_rows * num_cols, dtype=mass.dtype, device=mass.device)
    flat.scatter_add_(1, rows * num_cols + cols, mass)
    return flat.view(-1, max_rows, num_cols)


def softsort_apply(anchors: Tensor, values: Tensor, padding_mask: Tensor | None, temperature: float,
                   payload: Tensor) -> Tensor:
    """P @ payload for the SoftSort matrix with squared differences, P[k, i] = softmax_i(-(a_k - s_i)^2 / T),
    without forming P (memory O(n), not O(n^2), per set and slice).

    Row k of P is a 1-D softmax attention of the query a_k over the keys s_i: -(a - s)^2 = 2as - s^2 - a^2 and
    -a^2 is constant along the row, so the logits are <(2a_k, -1), (s_i, s_i^2)> / T. The fused CPU/GPU kernels
    of scaled_dot_product_attention want queries and keys as wide as the payload, hence the zero columns.
    anchors: (B, S, n) the ascending sorted values (valid first), values: (B, S, n) in element order,
    padding_mask: broadcastable to (B, S, n), True = padded element, or None; payload: broadcastable to
    (B, S, n, c). Returns (B, S, n, c): row k = Σ_i P[k, i] payload[i]; padded elements get no weight and rows
    of padded ranks are zero. Larger T = softer; as T goes to 0, P becomes the sorting permutation.
    """
    columns = payload.shape[-1]
    width = max(2, columns)
    queries = F.pad(torch.stack([2 * anchors, torch.full_like(anchors, -1.0)], dim=-1), (0, width - 2))
    keys = F.pad(torch.stack([values, values.square()], dim=-1), (0, width - 2))  # (B, S, n, width)
    payload = F.pad(payload, (0, width - columns)).expand(*values.shape, width)
    allowed = None if padding_mask is None else ~padding_mask.unsqueeze(-2)  # (..., 1, n) True = takes part
    moved = F.scaled_dot_product_attention(queries, keys, payload, attn_mask=allowed, scale=1.0 / temperature)
    moved = moved[..., :columns]  # (B, S, n, c)
    if padding_mask is None:
        return moved
    count = (~padding_mask).sum(-1, keepdim=True)  # (..., 1)
    valid_ranks = torch.arange(values.shape[-1], device=values.device) < count  # (..., n)
    return moved * valid_ranks.unsqueeze(-1).to(moved.dtype)


SoftPermutationProduct = Callable[[Tensor, Tensor, "Tensor | None", float, Tensor], Tensor]

# name -> (soft permutation) @ payload with softsort_apply's signature
RELAXATIONS: dict[str, SoftPermutationProduct] = {"softsort": softsort_apply, "lapsum": lapsum_apply}
