"""Object File Format (.off) meshes: a tolerant reader and a writer.

ModelNet ships .off files, and PyG's own reader (`torch_geometric.io.read_off`) rejects what real files
from elsewhere often contain (reference/env.md §3). This reader accepts:

* `#` comments (whole-line or trailing) and blank lines anywhere;
* the header keyword alone (`OFF`), followed by the counts on the same line (`OFF 8 6 0`) or glued to
  them (`OFF8 6 0`, a quirk of the real ModelNet files);
* the `COFF`, `NOFF`, `CNOFF`, `STOFF` variants: extra per-vertex columns (colours, normals, texture
  coordinates) and trailing per-face colours are ignored;
* faces of any size: polygons with more than 3 corners are fan-triangulated (PyG keeps quads but drops
  larger polygons).

Anything else it cannot read raises `DataError` naming the file and the problem. `surface_problem` says why
a readable mesh still has no surface to sample points from.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from lab.download import DataError

_HEADER = re.compile(r"^(?P<variant>[A-Za-z0-9]*?)OFF(?P<rest>.*)$")
_KNOWN_VARIANTS = {"", "C", "N", "CN", "ST", "STC", "STN", "STCN"}
MIN_SCALED_AREA = 1e-12  # below this, a mesh scaled into [-1, 1] is flat to rounding error: no surface to sample


def meaningful_lines(text: str) -> list[str]:
    """The lines of `text` with comments removed, stripped, blank ones dropped."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def parse_off(text: str, source: str = "<string>") -> tuple[Tensor, Tensor]:
    """(vertices (V, 3) float32, triangles (3, F) int64) of the mesh in `text`; `source` names it in errors."""
    lines = meaningful_lines(text)
    header = _HEADER.match(lines[0]) if lines else None
    if header is None:
        raise DataError(f"{source}: not an OFF mesh (the first non-comment line must start with OFF)")
    variant, rest = header["variant"], header["rest"].strip()
    if variant not in _KNOWN_VARIANTS or rest.upper().startswith("BINARY"):
        raise DataError(f"{source}: unsupported OFF header '{lines[0]}'; readable: "
                        f"{', '.join(v + 'OFF' for v in sorted(_KNOWN_VARIANTS))} (ASCII)")
    body = ([rest] if rest else []) + lines[1:]
    try:
        num_vertices, num_faces = (int(count) for count in body[0].split()[:2])
        vertex_lines = body[1:1 + num_vertices]
        face_lines = body[1 + num_vertices:1 + num_vertices + num_faces]
        if len(vertex_lines) < num_vertices or len(face_lines) < num_faces:
            raise DataError(f"{source}: truncated: the header announces {num_vertices} vertices and "
                            f"{num_faces} faces, the file holds {len(body) - 1} data lines")
        vertices = torch.tensor([[float(value) for value in line.split()[:3]] for line in vertex_lines],
                                dtype=torch.float32).view(-1, 3)
        triangles = [fan for line in face_lines for fan in _triangulate(line)]
    except (IndexError, ValueError) as error:
        raise DataError(f"{source}: malformed OFF mesh ({error})") from None
    faces = torch.tensor(triangles, dtype=torch.long).view(-1, 3).t().contiguous()  # (3, F)
    if faces.shape[1] == 0:
        raise DataError(f"{source}: the mesh has no faces to sample points from")
    if faces.min() < 0 or faces.max() >= num_vertices:
        raise DataError(f"{source}: a face refers to a vertex outside 0..{num_vertices - 1}")
    return vertices, faces


def surface_problem(vertices: Tensor, faces: Tensor) -> str | None:
    """Why points cannot be sampled from the mesh's surface (None if they can): non-finite coordinates, or
    no area at all. Areas are computed in float64 after scaling into [-1, 1], as the sampler does."""
    if not torch.isfinite(vertices).all():
        bad = int((~torch.isfinite(vertices)).any(1).nonzero()[0])
        return f"vertex {bad} has a non-finite coordinate ({vertices[bad].tolist()})"
    scaled = vertices.double()
    scaled = scaled / scaled.abs().max().clamp_min(torch.finfo(torch.float64).tiny)  # (V, 3) in [-1, 1]
    corner = scaled[faces]  # (3, F, 3)
    area = torch.linalg.cross(corner[1] - corner[0], corner[2] - corner[0], dim=-1).norm(dim=-1).sum()
    if area < MIN_SCALED_AREA:
        return f"its faces have no surface area (total {float(area):.3g} once scaled into [-1, 1])"
    return None


def _triangulate(face_line: str) -> list[tuple[int, int, int]]:
    """`n i_1 ... i_n [colour]` -> the fan (i_1, i_k, i_k+1), k = 2 .. n-1."""
    items = face_line.split()
    size = int(items[0])
    corners = [int(index) for index in items[1:1 + size]]
    if size < 3 or len(corners) < size:
        raise ValueError(f"face line '{face_line}' does not list {size} >= 3 vertex indices")
    return [(corners[0], corners[k], corners[k + 1]) for k in range(1, size - 1)]


def read_off(path: Path) -> tuple[Tensor, Tensor]:
    """Read an .off file (see `parse_off`)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    return parse_off(text, str(path))


def write_off(path: Path, vertices: Tensor, faces: list[list[int]], *, comments: tuple[str, ...] = (),
              glued_header: bool = False) -> None:
    """Write a mesh: vertices (V, 3), faces as lists of vertex indices (any polygon size).

    `comments` become `#` lines after the header (with a blank line after them); `glued_header` writes the
    counts right after `OFF` on one line, as some real ModelNet files do.
    """
    counts = f"{vertices.shape[0]} {len(faces)} 0"
    lines = [f"OFF{counts}"] if glued_header else ["OFF", counts]
    if comments:
        lines[1:1] = [f"# {comment}" for comment in comments] + [""]
    lines += [" ".join(f"{value:.6f}" for value in vertex) for vertex in vertices.tolist()]
    lines += [" ".join(str(index) for index in [len(face), *face]) for face in faces]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
