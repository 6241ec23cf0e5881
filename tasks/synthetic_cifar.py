"""A learnable but hard stand-in for CIFAR, written in the upstream pickle layout (for tests, demos, benches).

Each class is a glyph made of straight strokes (T, ⊥, L, Γ, H, Π, U, E, F, +). Classes share their strokes:
T and ⊥, L and Γ, Π and U hold the same strokes in a different vertical arrangement, H, Π and U the same
bag of two vertical bars and a horizontal one. So no single patch and no sum of per-patch evidence names the
class: the arrangement of distant patches does, as the parts of an object do in a photograph. Every image
draws its own pose (position, size, aspect, a slight rotation, stroke width, a horizontal mirror, so the
task's flip augmentation keeps labels), colours (a bright glyph of any hue on a dark background of any hue),
a background gradient, clutter (dots and short strokes of any colour) and pixel noise; stroke ends jitter.

How hard (one thread, batch 32, AdamW with the task's cosine schedule, test accuracy on 500 images): a ViT of
width 64, depth 2, 4 heads, lr 2e-3 is at 18% after 100 steps, passes 90% after ~575 steps and ends at 91%
after 800; one of width 32 with 2 heads (lr 3e-3) reaches 47% after 300 steps while the same model without
attention blocks (depth 0, mean pooling) stays at 15% (tests/test_synthetic_difficulty.py checks the gap).

CIFAR-100: 100 classes = glyph (10) x hue family of the glyph (10). The files are exactly the upstream ones:
`data_batch_1..5`, `test_batch`, `batches.meta` (CIFAR-10) or `train`, `test`, `meta` (CIFAR-100), pickled
dicts with `data` (uint8, N x 3072, channel-major) and labels.
"""
from __future__ import annotations

import colorsys
import math
import pickle
from pathlib import Path

import numpy as np

SIZE = 32
# strokes on the unit square [-1, 1]^2, image orientation (y grows downwards): (x0, y0, x1, y1)
GLYPHS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "T": ((-1, -1, 1, -1), (0, -1, 0, 1)),
    "inverted_T": ((-1, 1, 1, 1), (0, -1, 0, 1)),
    "L": ((-1, -1, -1, 1), (-1, 1, 1, 1)),
    "Gamma": ((-1, -1, -1, 1), (-1, -1, 1, -1)),
    "H": ((-1, -1, -1, 1), (1, -1, 1, 1), (-1, 0, 1, 0)),
    "Pi": ((-1, -1, 1, -1), (-1, -1, -1, 1), (1, -1, 1, 1)),
    "U": ((-1, 1, 1, 1), (-1, -1, -1, 1), (1, -1, 1, 1)),
    "E": ((-1, -1, -1, 1), (-1, -1, 1, -1), (-1, 0, 0.6, 0), (-1, 1, 1, 1)),
    "F": ((-1, -1, -1, 1), (-1, -1, 1, -1), (-1, 0, 0.6, 0)),
    "plus": ((-1, 0, 1, 0), (0, -1, 0, 1)),
}
GLYPH_NAMES = tuple(GLYPHS)
PIXEL_Y, PIXEL_X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5  # pixel centres
DARK, BRIGHT = (0.1, 0.45), (0.75, 1.0)  # HSV value ranges of backgrounds and glyphs


def _segment_ink(x0: float, y0: float, x1: float, y1: float, width: float) -> np.ndarray:
    """(32, 32) anti-aliased coverage of a stroke of `width` pixels between two points (pixel coordinates)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((PIXEL_X - x0) * dx + (PIXEL_Y - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    distance = np.hypot(PIXEL_X - (x0 + t * dx), PIXEL_Y - (y0 + t * dy))
    return np.clip(width / 2 - distance + 0.5, 0.0, 1.0)


def _random_colour(rng: np.random.Generator, value: tuple[float, float], hue: float | None = None) -> np.ndarray:
    """An RGB colour (3,) in [0, 1]: any hue (or near `hue`), saturation 0.3-1, HSV value in `value`."""
    hue = rng.uniform() if hue is None else (hue + rng.uniform(-0.04, 0.04)) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.3, 1.0), rng.uniform(*value)))


def glyph_image(glyph: str, rng: np.random.Generator, hue: float | None = None) -> np.ndarray:
    """One (3, 32, 32) float image in [0, 1] of `glyph`; `hue` fixes the glyph's hue family (CIFAR-100)."""
    background = _random_colour(rng, DARK)
    gradient = rng.uniform(-0.1, 0.1, (3, 1, 1)) * np.linspace(-1, 1, SIZE)[None, None, :]  # (3, 1, 32)
    image = np.broadcast_to(background[:, None, None] + gradient, (3, SIZE, SIZE)).copy()  # (3, 32, 32)
    for _ in range(rng.integers(0, 3)):  # clutter: dots and short strokes of any colour
        x, y = rng.uniform(0, SIZE, 2)
        angle, length = rng.uniform(0, math.pi), rng.uniform(0, 4)
        coverage = _segment_ink(x, y, x + length * math.cos(angle), y + length * math.sin(angle), rng.uniform(1.5, 2.5))
        image += coverage[None] * (_random_colour(rng, (0.3, 1.0))[:, None, None] - image)
    half = rng.uniform(10.0, 13.5)  # half the glyph's height in pixels
    aspect = rng.uniform(0.75, 1.25)
    angle = rng.uniform(-0.1, 0.1)
    mirror = -1.0 if rng.uniform() < 0.5 else 1.0
    centre = rng.uniform(half, SIZE - half, 2)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    scale = np.array([half * aspect * mirror, half / aspect])
    width = rng.uniform(2.4, 3.4)
    coverage = np.zeros((SIZE, SIZE))
    for stroke in GLYPHS[glyph]:
        ends = np.array(stroke, dtype=np.float64).reshape(2, 2) + rng.normal(0, 0.05, (2, 2))  # (2 ends, xy)
        x0, y0, x1, y1 = (ends * scale @ rotation.T + centre).ravel()
        coverage = np.maximum(coverage, _segment_ink(x0, y0, x1, y1, width))
    ink = _random_colour(rng, BRIGHT, hue)
    image += coverage[None] * (ink[:, None, None] - image)
    return np.clip(image + rng.normal(0, 0.04, image.shape), 0.0, 1.0)


def class_images(label: int, count: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 3, 32, 32) uint8 images of class `label`."""
    glyph = GLYPH_NAMES[label % len(GLYPH_NAMES)]
    hue = (label // len(GLYPH_NAMES)) / 10.0 if num_classes > len(GLYPH_NAMES) else None
    images = [glyph_image(glyph, rng, hue) for _ in range(count)]
    return np.round(np.stack(images) * 255).astype(np.uint8)


def _split(num_classes: int, per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    data = np.concatenate([class_images(int(c), 1, num_classes, rng) for c in labels])
    return data.reshape(len(labels), -1), labels.tolist()


def _dump(path: Path, entry: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(entry, handle, protocol=2)


def write_cifar_files(folder: Path, task_cls, train: tuple[np.ndarray, list[int]], test: tuple[np.ndarray, list[int]],
                      names: list[str]) -> None:
    """Write (data (N, 3072) uint8 channel-major, labels) splits as the upstream pickles `task_cls` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (train_data, train_labels), (test_data, test_labels) = train, test
    if task_cls.label_key == "fine_labels":  # CIFAR-100
        coarse = lambda labels: [label // 5 for label in labels]  # noqa: E731  (20 superclasses)
        _dump(folder / "train", {"filenames": [f"img_{i}.png" for i in range(len(train_labels))],
                                 "batch_label": "training batch 1 of 1", "fine_labels": train_labels,
                                 "coarse_labels": coarse(train_labels), "data": train_data})
        _dump(folder / "test", {"filenames": [f"img_{i}.png" for i in range(len(test_labels))],
                                "batch_label": "testing batch 1 of 1", "fine_labels": test_labels,
                                "coarse_labels": coarse(test_labels), "data": test_data})
        _dump(folder / "meta", {"fine_label_names": names,
                                "coarse_label_names": [f"synthetic_group_{i}" for i in range(20)]})
        return
    chunks = np.array_split(np.arange(len(train_labels)), 5)
    for number, chunk in enumerate(chunks, start=1):
        _dump(folder / f"data_batch_{number}", {
            "batch_label": f"training batch {number} of 5", "labels": [train_labels[i] for i in chunk],
            "data": train_data[chunk], "filenames": [f"img_{i}.png" for i in chunk]})
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_labels,
                                  "data": test_data, "filenames": [f"img_{i}.png" for i in range(len(test_labels))]})
    _dump(folder / "batches.meta", {"num_cases_per_batch": len(chunks[0]), "label_names": names, "num_vis": 3072})


def write_synthetic_cifar(folder: Path, task_cls, train_per_class: int | None = None,
                          test_per_class: int | None = None, seed: int = 0) -> None:
    """Write a synthetic dataset into `folder` in the layout `task_cls` (Cifar10 or Cifar100) reads."""
    rng = np.random.default_rng(seed)
    cifar100 = task_cls.label_key == "fine_labels"
    num_classes = 100 if cifar100 else 10
    train_per_class = train_per_class or (20 if cifar100 else 200)
    test_per_class = test_per_class or (5 if cifar100 else 50)
    names = [GLYPH_NAMES[i % 10] + (f"_hue{i // 10}" if cifar100 else "") for i in range(num_classes)]
    write_cifar_files(folder, task_cls, _split(num_classes, train_per_class, rng),
                      _split(num_classes, test_per_class, rng), names)
