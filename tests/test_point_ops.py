"""kNN and farthest-point sampling (backbones/point_ops.py) against brute-force float64 references."""
from __future__ import annotations

import pytest
import torch

from backbones.point_ops import farthest_point_sample, gather_points, knn


def brute_force_knn(queries: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """Nearest-first neighbour indices, one query at a time with explicit float64 distances."""
    out = torch.empty(queries.shape[0], queries.shape[1], k, dtype=torch.long)
    for b in range(queries.shape[0]):
        for s in range(queries.shape[1]):
            distances = [float(((points[b, j].double() - queries[b, s].double()) ** 2).sum())
                         for j in range(points.shape[1])]
            out[b, s] = torch.tensor(sorted(range(len(distances)), key=distances.__getitem__)[:k])
    return out


def brute_force_fps(cloud: torch.Tensor, num_samples: int, start: int) -> list[int]:
    """Greedy farthest-point order by its definition: maximise the distance to the nearest chosen point."""
    cloud = cloud.double()
    chosen = [start]
    while len(chosen) < num_samples:
        gaps = [min(float(((cloud[i] - cloud[c]) ** 2).sum()) for c in chosen) for i in range(len(cloud))]
        chosen.append(max(range(len(cloud)), key=gaps.__getitem__))
    return chosen


def test_knn_matches_brute_force_at_an_awkward_size():
    g = torch.Generator().manual_seed(42)
    points = torch.rand(2, 37, 3, generator=g)
    queries = torch.rand(2, 5, 3, generator=g)
    assert torch.equal(knn(queries, points, k=6), brute_force_knn(queries, points, 6))


def test_self_knn_puts_each_point_first():
    points = torch.rand(3, 20, 3, generator=torch.Generator().manual_seed(0))
    index = knn(points, k=4)
    assert torch.equal(index[..., 0], torch.arange(20).expand(3, 20))
    assert torch.equal(index, brute_force_knn(points, points, 4))


def test_knn_refuses_more_neighbours_than_points():
    with pytest.raises(ValueError, match="k=9 neighbours requested from a cloud of 8 points"):
        knn(torch.rand(1, 8, 3), k=9)


def test_farthest_point_sample_matches_the_greedy_definition():
    cloud = torch.rand(2, 41, 3, generator=torch.Generator().manual_seed(1))
    index = farthest_point_sample(cloud, 9)
    assert index.shape == (2, 9)
    for b in range(2):
        assert index[b].tolist() == brute_force_fps(cloud[b], 9, start=0)


def test_farthest_point_sample_random_start_follows_the_generator():
    cloud = torch.rand(3, 30, 3, generator=torch.Generator().manual_seed(2))
    first = farthest_point_sample(cloud, 6, generator=torch.Generator().manual_seed(7))
    again = farthest_point_sample(cloud, 6, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, again)
    for b in range(3):
        assert first[b].tolist() == brute_force_fps(cloud[b], 6, start=int(first[b, 0]))
        assert len(set(first[b].tolist())) == 6


def test_farthest_point_sample_covers_separated_clusters_first():
    """Four tight clusters far apart: the first four samples land one in each."""
    centres = torch.tensor([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]])
    cloud = (centres.repeat_interleave(10, 0) + 0.01 * torch.randn(40, 3)).unsqueeze(0)
    clusters = farthest_point_sample(cloud, 4)[0] // 10
    assert sorted(clusters.tolist()) == [0, 1, 2, 3]


def test_gather_points_keeps_the_index_shape():
    values = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)
    index = torch.tensor([[[4, 0], [1, 1]], [[2, 3], [0, 4]]])  # (B=2, S=2, k=2)
    picked = gather_points(values, index)
    assert picked.shape == (2, 2, 2, 2)
    assert torch.equal(picked[1, 0, 1], values[1, 3]) and torch.equal(picked[0, 0, 0], values[0, 4])
