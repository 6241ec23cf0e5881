"""A learnable stand-in for ModelNet: parametric meshes written in ModelNet's real raw layout.

    <raw>/<class>/train/<class>_0001.off ... <raw>/<class>/test/<class>_0025.off ...

Eight classes of distinct primitives (box, cone, cylinder, octahedron, prism, pyramid, sphere, torus), each
mesh with random proportions and a random pose (azimuth, small tilt, scale, offset). Some files carry
comment and blank lines, others the `OFF<counts>` glued header, so loading them exercises the tolerant
.off reader. The ten ModelNet10 class folders are created empty, because PyG's `ModelNet` looks for them
even for ModelNet40 (reference/env.md §3).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .off_format import write_off

# the folders torch_geometric.datasets.ModelNet checks before it considers the raw data present
MODELNET10_CLASSES = ("bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table",
                      "toilet")
SEGMENTS = 16  # polygon resolution of round shapes

Mesh = tuple[Tensor, list[list[int]]]  # vertices (V, 3) float64, faces as vertex-index lists


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def revolve(profile: list[tuple[float, float]], closed: bool = False) -> tuple[Tensor, list[list[int]],
                                                                               list[list[int]]]:
    """Surface of revolution about z of `profile` [(radius, z), ...]; zero-radius points become poles.

    Returns vertices, faces (quads between rings, triangles to poles) and the vertex rings.
    """
    angles = torch.arange(SEGMENTS, dtype=torch.float64) * (2 * math.pi / SEGMENTS)
    vertices, rings = [], []
    for radius, z in profile:
        start = sum(len(v) for v in vertices)
        if radius == 0:
            vertices.append(torch.tensor([[0.0, 0.0, z]], dtype=torch.float64))
            rings.append([start])
        else:
            vertices.append(torch.stack([radius * angles.cos(), radius * angles.sin(),
                                         torch.full_like(angles, z)], dim=1))
            rings.append(list(range(start, start + SEGMENTS)))
    bands = list(zip(rings, rings[1:])) + ([(rings[-1], rings[0])] if closed else [])
    faces = []
    for lower, upper in bands:
        for s in range(SEGMENTS):
            t = (s + 1) % SEGMENTS
            if len(lower) == 1:
                faces.append([lower[0], upper[t], upper[s]])
            elif len(upper) == 1:
                faces.append([lower[s], lower[t], upper[0]])
            else:
                faces.append([lower[s], lower[t], upper[t], upper[s]])
    return torch.cat(vertices), faces, rings


def box(g: torch.Generator) -> Mesh:
    half = torch.tensor([_uniform(g, 0.6, 1.4) for _ in range(3)], dtype=torch.float64) / 2
    corners = torch.tensor([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=torch.float64)
    faces = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    return corners * half, faces


def sphere(g: torch.Generator) -> Mesh:
    polar = [math.pi * i / 8 for i in range(9)]
    vertices, faces, _ = revolve([(round(math.sin(a), 12), -math.cos(a)) for a in polar])
    radii = torch.tensor([_uniform(g, 0.85, 1.15) for _ in range(3)], dtype=torch.float64)
    return vertices * radii, faces


def cylinder(g: torch.Generator) -> Mesh:
    radius, height = _uniform(g, 0.35, 0.6), _uniform(g, 1.2, 2.2)
    vertices, faces, rings = revolve([(radius, -height / 2), (radius, height / 2)])
    return vertices, faces + [rings[0][::-1], rings[1]]  # the caps as 16-gons


def cone(g: torch.Generator) -> Mesh:
    radius, height = _uniform(g, 0.4, 0.75), _uniform(g, 1.0, 2.0)
    vertices, faces, rings = revolve([(radius, -height / 2), (0.0, height / 2)])
    return vertices, faces + [rings[0][::-1]]  # the base as a 16-gon


def torus(g: torch.Generator) -> Mesh:
    tube = _uniform(g, 0.2, 0.45)
    around = [2 * math.pi * i / 12 for i in range(12)]
    vertices, faces, _ = revolve([(1.0 + tube * math.cos(a), tube * math.sin(a)) for a in around], closed=True)
    return vertices, faces


def pyramid(g: torch.Generator) -> Mesh:
    width, depth, height = _uniform(g, 0.9, 1.4), _uniform(g, 0.9, 1.4), _uniform(g, 0.8, 1.5)
    vertices = torch.tensor([[-width / 2, -depth / 2, 0], [width / 2, -depth / 2, 0], [width / 2, depth / 2, 0],
                             [-width / 2, depth / 2, 0], [0, 0, height]], dtype=torch.float64)
    return vertices, [[3, 2, 1, 0], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]]


def octahedron(g: torch.Generator) -> Mesh:
    axes = [_uniform(g, 0.7, 1.3) for _ in range(3)]
    vertices = torch.tensor([[axes[0], 0, 0], [-axes[0], 0, 0], [0, axes[1], 0], [0, -axes[1], 0],
                             [0, 0, axes[2]], [0, 0, -axes[2]]], dtype=torch.float64)
    faces = [[x, y, z] for x in (0, 1) for y in (2, 3) for z in (4, 5)]
    return vertices, faces


def prism(g: torch.Generator) -> Mesh:
    side, length = _uniform(g, 0.8, 1.3), _uniform(g, 1.2, 2.0)
    triangle = [(side * math.cos(a), side * math.sin(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
    vertices = torch.tensor([[x, y, z] for z in (-length / 2, length / 2) for x, y in triangle], dtype=torch.float64)
    return vertices, [[2, 1, 0], [3, 4, 5], [0, 1, 4, 3], [1, 2, 5, 4], [2, 0, 3, 5]]


SHAPES: dict[str, Callable[[torch.Generator], Mesh]] = {
    "box": box, "cone": cone, "cylinder": cylinder, "octahedron": octahedron, "prism": prism,
    "pyramid": pyramid, "sphere": sphere, "torus": torus,
}


def random_pose(vertices: Tensor, g: torch.Generator) -> Tensor:
    """Rotate about z (any azimuth), tilt about x by up to ~15 degrees, scale and offset."""
    azimuth, tilt = _uniform(g, 0, 2 * math.pi), _uniform(g, -0.25, 0.25)
    cos_a, sin_a, cos_t, sin_t = math.cos(azimuth), math.sin(azimuth), math.cos(tilt), math.sin(tilt)
    spin = torch.tensor([[cos_a, -sin_a, 0], [sin_a, cos_a, 0], [0, 0, 1]], dtype=torch.float64)
    lean = torch.tensor([[1, 0, 0], [0, cos_t, -sin_t], [0, sin_t, cos_t]], dtype=torch.float64)
    offset = torch.rand(3, generator=g, dtype=torch.float64) * 2 - 1
    return _uniform(g, 0.5, 2.0) * vertices @ (lean @ spin).T + offset


def write_synthetic_modelnet(raw_dir: Path, *, train_per_class: int = 24, test_per_class: int = 8,
                             seed: int = 0) -> None:
    """Write the synthetic meshes (deterministic for a given seed) under `raw_dir`."""
    raw_dir = Path(raw_dir)
    generator = torch.Generator().manual_seed(seed)
    for name in MODELNET10_CLASSES:
        (raw_dir / name).mkdir(parents=True, exist_ok=True)
    file_count = 0
    for name, make in SHAPES.items():
        for number in range(1, train_per_class + test_per_class + 1):
            split = "train" if number <= train_per_class else "test"
            folder = raw_dir / name / split
            folder.mkdir(parents=True, exist_ok=True)
            vertices, faces = make(generator)
            comments = (f"synthetic {name} written by `python -m tasks.prepare modelnet40 --synthetic`",
                        "random proportions and pose") if file_count % 3 == 1 else ()
            write_off(folder / f"{name}_{number:04d}.off", random_pose(vertices, generator), faces,
                      comments=comments, glued_header=file_count % 3 == 2)
            file_count += 1
