"""A small, learnable stand-in for Pathfinder-32 (Linsley et al. 2018; LRA's `pathfinder32`), written in
the release's layout: are the two dots joined by one dashed curve?

Every image (32 x 32, grey curves and white dots on black) holds two long dashed curves, `distractors` short
dashed curves and two dots (2 x 2 squares). Both classes share one layout: a long curve with a dot at one
end, and a second long curve starting as far from that dot as a long curve's two ends lie apart
(`min_separation`..`max_separation`, 12-14 pixels). Positive: the other dot ends the first curve; negative:
it starts the second. Images are written in pairs, a positive and a negative whose dots are at exactly the
same squared distance. So the classes have the same curves, ink, ink spread and dot distances: one threshold
on any of these is near chance (tests/test_lra.py; an earlier version let the dots' distance alone reach
0.65, 0.80 with short curves): a model has to follow a curve from one dot.
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
# The release's three difficulties, as this stand-in draws them (`image` options): shorter curves with dots
# closer together and fewer distractors are easier, as in the release (6, 9 and 14 paddles per curve).
SHAPES = {
    "curv_baseline": {"curve_length": 10, "min_separation": 6.0, "max_separation": 8.0, "distractors": 1},
    "curv_contour_length_9": {"curve_length": 14, "min_separation": 9.0, "max_separation": 11.0, "distractors": 2},
    "curv_contour_length_14": {"curve_length": 18, "min_separation": 12.0, "max_separation": 14.0, "distractors": 2},
}


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


def walk(rng: np.random.Generator, length: int, max_turn: float,
         start: tuple[int, int] | None = None) -> list[tuple[int, int]] | None:
    """Pixel centres of a smooth random walk of `length` one-pixel steps inside the image (None if it leaves),
    from the pixel `start` or a random point."""
    y, x = rng.uniform(3, SIZE - 3, size=2) if start is None else (start[0] + 0.5, start[1] + 0.5)
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


def curve(canvas: Canvas, rng: np.random.Generator, length: int, max_turn: float, separation: tuple[float, float],
          start: tuple[int, int] | None = None, tries: int = 200) -> list[tuple[int, int]] | None:
    """A long curve clear of what `canvas` holds, its ends `separation` apart (every long curve, in both
    classes, so a curve's straightness says nothing of the label), reserved on the canvas; None if none fits."""
    for _ in range(tries):
        points = walk(rng, length, max_turn, start)
        if (points is not None and separation[0] <= math.dist(points[0], points[-1]) <= separation[1]
                and canvas.free(points)):
            canvas.draw(points, 0)  # reserve the whole curve, gaps included
            return points
    return None


def squared_distance(a: tuple[int, int], b: tuple[int, int]) -> int:
    return (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2


def span2(rng: np.random.Generator, length: int, max_turn: float, separation: tuple[float, float]) -> int:
    """The squared end-to-end distance of a fresh random long curve (the spread of curve ends a layout imitates)."""
    while True:
        points = walk(rng, length, max_turn)
        if points is not None and separation[0] <= math.dist(points[0], points[-1]) <= separation[1]:
            return squared_distance(points[0], points[-1])


def image(label: int, rng: np.random.Generator, *, curve_length: int, distractors: int, min_separation: float,
          max_separation: float, max_turn: float = 0.35, dot_distance2: int | None = None) -> tuple[np.ndarray, int]:
    """One (32, 32) uint8 image of class `label` (1: the dots are joined) and its dots' squared distance in
    pixels. Both classes share one layout: a long curve with a dot at one end, and a second long curve that
    starts at a pixel as far from that dot as the two ends of a long curve lie apart. A positive's other dot
    ends the first curve, a negative's starts the second. `dot_distance2` sets a negative's squared dot
    distance (to match a positive's)."""
    separation = (min_separation, max_separation)
    while True:
        canvas = Canvas()
        first = curve(canvas, rng, curve_length, max_turn, separation)
        if first is None:
            continue
        dot_a = first[0] if rng.random() < 0.5 else first[-1]
        gap2 = dot_distance2 if dot_distance2 is not None and not label else span2(rng, curve_length, max_turn,
                                                                                    separation)
        starts = [(y, x) for y in range(SIZE) for x in range(SIZE) if squared_distance((y, x), dot_a) == gap2]
        second = None
        for index in rng.permutation(len(starts)):
            second = curve(canvas, rng, curve_length, max_turn, separation, start=starts[index], tries=25)
            if second is not None:
                break
        if second is None:
            continue
        ends = (first[0], first[-1]) if label else (dot_a, second[0])
        curves = [first, second]
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
        return canvas.pixels, squared_distance(*ends)


def write_synthetic_pathfinder(folder: Path, count: int = 2000, per_batch: int = 500, seed: int = 0, **shape) -> Path:
    """Write `count` balanced images into `folder` (…/pathfinder32/curv_contour_length_14) in the release layout;
    `shape`: keyword options of `image` (curve length, distractors, dot separation, turning) over the hard
    set's. Images come in pairs, a positive and a negative whose dots lie at the same distance, so the two
    classes' dot distances are one distribution."""
    from PIL import Image

    shape = {**SHAPES["curv_contour_length_14"], **shape}
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    labels = rng.permutation(np.arange(count) % 2)
    images: dict[int, list[np.ndarray]] = {0: [], 1: []}
    while len(images[0]) < count // 2 or len(images[1]) < count - count // 2:
        positive, distance2 = image(1, rng, **shape)
        images[1].append(positive)
        images[0].append(image(0, rng, dot_distance2=distance2, **shape)[0])
    for batch, start in enumerate(range(0, count, per_batch)):
        subdir = folder / "imgs" / str(batch)
        subdir.mkdir(parents=True, exist_ok=True)
        lines = []
        for index in range(start, min(start + per_batch, count)):
            Image.fromarray(images[int(labels[index])].pop()).save(subdir / f"sample_{index}.png")
            lines.append(f"imgs/{batch} sample_{index}.png {index} {labels[index]} "
                         f"{shape['curve_length']} {shape['distractors']}\n")
        (folder / "metadata" / f"{batch}.npy").write_text("".join(lines))
    return folder
