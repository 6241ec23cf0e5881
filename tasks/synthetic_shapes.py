"""A learnable but hard stand-in for ModelNet: parametric meshes written in ModelNet's real raw layout.

    <raw>/<class>/train/<class>_0001.off ... <raw>/<class>/test/<class>_0025.off ...

Eight classes of primitives (box, cone, cylinder, octahedron, prism, pyramid, sphere, torus). What makes
them hard to tell apart, as scanned furniture is:
* pose: any azimuth and a tilt of up to ~35 degrees (real ModelNet meshes are mostly upright), after a
  stretch of each axis by up to 1.33x, so proportions overlap between classes (a stretched octahedron
  against a squat pyramid, a flat cylinder against a box);
* clutter: most meshes carry one or two small distractor primitives of any class beside the object;
* missing surface: each face is dropped with probability 0.1 (an open box, a cone without its base).
Some files carry comment and blank lines, others the `OFF<counts>` glued header, so loading them exercises
the tolerant .off reader. The ten ModelNet10 class folders are created empty, because PyG's `ModelNet` looks
for them even for ModelNet40 (reference/env.md §3).
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


def rotation(axis: Tensor, angle: float) -> Tensor:
    """The (3, 3) rotation by `angle` about the unit vector `axis` (Rodrigues)."""
    x, y, z = axis.tolist()
    cross = torch.tensor([[0, -z, y], [z, 0, -x], [-y, x, 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def random_orientation(g: torch.Generator, max_tilt: float = 0.6) -> Tensor:
    """Any azimuth about z, then a tilt of up to `max_tilt` radians about a random horizontal axis."""
    spin = rotation(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), _uniform(g, 0, 2 * math.pi))
    heading = _uniform(g, 0, 2 * math.pi)
    tilt_axis = torch.tensor([math.cos(heading), math.sin(heading), 0.0], dtype=torch.float64)
    return rotation(tilt_axis, _uniform(g, -max_tilt, max_tilt)) @ spin


def random_pose(vertices: Tensor, g: torch.Generator) -> Tensor:
    """Stretch each axis by 0.75-1.33x, orient (any azimuth, tilt up to ~35 degrees), scale and offset."""
    stretch = torch.tensor([_uniform(g, math.log(0.75), math.log(4 / 3)) for _ in range(3)], dtype=torch.float64)
    offset = torch.rand(3, generator=g, dtype=torch.float64) * 2 - 1
    return _uniform(g, 0.5, 2.0) * (vertices * stretch.exp()) @ random_orientation(g).T + offset


def with_clutter(mesh: Mesh, g: torch.Generator) -> Mesh:
    """The mesh plus 0-2 small primitives of random classes placed just outside it (0: 30% of meshes)."""
    vertices, faces = mesh
    parts, all_faces = [vertices], list(faces)
    count = 0 if _uniform(g, 0, 1) < 0.3 else 1 + int(_uniform(g, 0, 1) < 0.4)
    for _ in range(count):
        make = list(SHAPES.values())[int(torch.randint(len(SHAPES), (), generator=g))]
        small, small_faces = make(g)
        direction = torch.nn.functional.normalize(torch.randn(3, generator=g, dtype=torch.float64), dim=0)
        reach = vertices.norm(dim=1).max().item()  # the object's radius
        placed = _uniform(g, 0.12, 0.25) * small @ random_orientation(g, math.pi).T + direction * reach * _uniform(g, 1.05, 1.4)
        start = sum(len(p) for p in parts)
        parts.append(placed)
        all_faces += [[start + index for index in face] for face in small_faces]
    return torch.cat(parts), all_faces


def with_holes(mesh: Mesh, g: torch.Generator, drop: float = 0.1) -> Mesh:
    """The mesh with each face dropped with probability `drop` (never all of them)."""
    vertices, faces = mesh
    kept = [face for face in faces if _uniform(g, 0, 1) >= drop]
    return vertices, kept or faces[:1]


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
            vertices, faces = with_clutter(with_holes(make(generator), generator), generator)
            comments = (f"synthetic {name} written by `python -m tasks.prepare modelnet40 --synthetic`",
                        "random proportions and pose") if file_count % 3 == 1 else ()
            write_off(folder / f"{name}_{number:04d}.off", random_pose(vertices, generator), faces,
                      comments=comments, glued_header=file_count % 3 == 2)
            file_count += 1
