"""A small, learnable stand-in for Pathfinder-32 (Linsley et al. 2018; LRA's `pathfinder32`), written in
the release's layout: are the two dots joined by one dashed curve?

Every image (32 x 32, grey curves and white dots on black) holds two long dashed curves, `distractors` short dashed
curves and two dots (2 x 2 squares). Positive: the dots sit on the two ends of the same long curve;
negative: one dot ends each long curve. Both classes have the same number of curves, dashes and dots,
and the two dots are `min_separation`..`max_separation` (12-14) pixels apart in both, so neither the
amount of ink nor the dots' distance gives the label away (the mean distances differ by ~0.4 pixel; with
6-14 they differed by ~4, joined dots lying near the end of the range): a model has to follow a curve from
one dot.
Curves are smooth random walks (heading changes of at most `max_turn` per pixel) that keep a pixel
of clearance from each other.

Layout, as in the release: `<folder>/imgs/<batch>/sample_<i>.png` (8-bit grayscale PNG) and
`<folder>/metadata/<batch>.npy`, a text file despite its name, one line per image:
`imgs/<batch> sample_<i>.png <i> <label> <curve length> <distractors>`; readers use fields 0, 1 and 3.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SIZE = 32


class Canvas:
    def __init__(self):
        self.pixels = np.zeros((SIZE, SIZE), dtype=np.uint8)
        self.taken = np.zeros((SIZE + 2, SIZE + 2), dtype=bool)  # occupied pixels grown by one, with a border

    def free(self, points: list[tuple[int, int]]) -> bool:
        return all(not self.taken[y + 1, x + 1] for y, x in points)

    def draw(self, points: list[tuple[int, int]], value: int = 255) -> None:
        for y, x in points:
            self.pixels[y, x] = value
            self.taken[y:y + 3, x:x + 3] = True


def walk(rng: np.random.Generator, length: int, max_turn: float) -> list[tuple[int, int]] | None:
    """Pixel centres of a smooth random walk of `length` one-pixel steps inside the image (None if it leaves)."""
    y, x = rng.uniform(3, SIZE - 3, size=2)
    heading = rng.uniform(0, 2 * math.pi)
    points = []
    for _ in range(length):
        cell = (int(y), int(x))
        if not (0 <= cell[0] < SIZE and 0 <= cell[1] < SIZE):
            return None
        if not points or points[-1] != cell:
            points.append(cell)
        heading += rng.uniform(-max_turn, max_turn)
        y, x = y + math.sin(heading), x + math.cos(heading)
    return points


def dashes(points: list[tuple[int, int]], dash: int = 3, gap: int = 1) -> list[tuple[int, int]]:
    """Every (dash + gap) pixels keep the first `dash` (the pathfinder's paddles)."""
    return [p for i, p in enumerate(points) if i % (dash + gap) < dash]


def dot(centre: tuple[int, int]) -> list[tuple[int, int]]:
    y, x = centre
    return [(min(max(y + dy, 0), SIZE - 1), min(max(x + dx, 0), SIZE - 1)) for dy in (0, 1) for dx in (0, 1)]


def image(label: int, rng: np.random.Generator, curve_length: int = 18, distractors: int = 2,
          min_separation: float = 12.0, max_separation: float = 14.0, max_turn: float = 0.35) -> np.ndarray:
    """One (32, 32) uint8 image of class `label` (1: the dots are joined)."""
    while True:
        canvas = Canvas()
        curves = []
        for _ in range(200):
            points = walk(rng, curve_length, max_turn)
            if points is not None and canvas.free(points):
                curves.append(points)
                canvas.draw(points, 0)  # reserve the whole curve, gaps included
                if len(curves) == 2:
                    break
        if len(curves) < 2:
            continue
        other_end = curves[0][-1] if label else curves[1][0] if rng.random() < 0.5 else curves[1][-1]
        ends = (curves[0][0], other_end)
        if not min_separation <= math.dist(*ends) <= max_separation:
            continue
        for _ in range(distractors):
            for _ in range(100):
                points = walk(rng, curve_length // 3, max_turn)
                if points is not None and canvas.free(points):
                    canvas.draw(points, 0)
                    curves.append(points)
                    break
        for points in curves:
            canvas.draw(dashes(points), 190)
        for end in ends:
            canvas.draw(dot(end))
        return canvas.pixels


def write_synthetic_pathfinder(folder: Path, count: int = 2000, per_batch: int = 500, seed: int = 0, **shape) -> Path:
    """Write `count` balanced images into `folder` (…/pathfinder32/curv_contour_length_14) in the release layout;
    `shape`: keyword options of `image` (curve length, distractors, dot separation, turning)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    labels = rng.permutation(np.arange(count) % 2)
    for batch, start in enumerate(range(0, count, per_batch)):
        subdir = folder / "imgs" / str(batch)
        subdir.mkdir(parents=True, exist_ok=True)
        lines = []
        for index in range(start, min(start + per_batch, count)):
            Image.fromarray(image(int(labels[index]), rng, **shape)).save(subdir / f"sample_{index}.png")
            lines.append(f"imgs/{batch} sample_{index}.png {index} {labels[index]} 18 2\n")
        (folder / "metadata" / f"{batch}.npy").write_text("".join(lines))
    return folder
