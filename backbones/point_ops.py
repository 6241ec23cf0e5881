"""Point-cloud neighbourhood operations in plain torch: kNN, farthest-point sampling, gathering.

PyG 2.8 takes `knn`/`fps` from pyg-lib only, which is not installable from PyPI (reference/env.md §3),
so the point-cloud backbones use these instead. Everything is batched over dense (B, N, C) clouds.
"""
from __future__ import annotations

import torch
from torch import Tensor


def gather_points(values: Tensor, index: Tensor) -> Tensor:
    """values (B, N, C), index (B, *S) of point indices -> (B, *S, C)."""
    batch, _, channels = values.shape
    flat = index.reshape(batch, -1)  # (B, prod(S))
    picked = values.gather(1, flat.unsqueeze(-1).expand(-1, -1, channels))  # (B, prod(S), C)
    return picked.view(*index.shape, channels)


def knn(queries: Tensor, points: Tensor | None = None, k: int = 16) -> Tensor:
    """Indices (B, S, k) of the k nearest `points` (B, N, 3) of every query (B, S, 3), nearest first.

    With `points=None` the queries are the points (a query is then its own nearest neighbour).
    """
    points = queries if points is None else points
    if not 0 < k <= points.shape[1]:
        raise ValueError(f"k={k} neighbours requested from a cloud of {points.shape[1]} points")
    distances = torch.cdist(queries, points)  # (B, S, N)
    return distances.topk(k, dim=-1, largest=False, sorted=True).indices


def farthest_point_sample(points: Tensor, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Indices (B, num_samples) chosen greedily, each the point farthest from those already chosen.

    The first index is 0 (deterministic) unless a `generator` is given, which draws it uniformly.
    points: (B, N, 3). O(num_samples * N) time, O(N) extra memory per cloud.
    """
    batch, n, _ = points.shape
    if not 0 < num_samples <= n:
        raise ValueError(f"cannot sample {num_samples} points from a cloud of {n}")
    chosen = torch.empty(batch, num_samples, dtype=torch.long, device=points.device)
    if generator is None:
        current = torch.zeros(batch, dtype=torch.long, device=points.device)
    else:
        current = torch.randint(n, (batch,), generator=generator, device=generator.device).to(points.device)
    nearest_chosen = torch.full((batch, n), float("inf"), dtype=points.dtype, device=points.device)  # (B, N)
    rows = torch.arange(batch, device=points.device)
    for step in range(num_samples):
        chosen[:, step] = current
        latest = points[rows, current].unsqueeze(1)  # (B, 1, 3)
        nearest_chosen = torch.minimum(nearest_chosen, (points - latest).square().sum(-1))
        current = nearest_chosen.argmax(dim=-1)
    return chosen
