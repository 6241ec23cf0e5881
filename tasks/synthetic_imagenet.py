"""A small, learnable stand-in for ImageNet written in the real on-disk layout (for tests and demos).

The layout is what torchvision's `ImageNet` leaves in a prepared root, which is also an ImageFolder tree:

    meta.bin                                  (wnid -> class names, the wnid of each val image), torch.save'd
    train/<wnid>/<wnid>_<k>.JPEG
    val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG

Each image (JPEG, 56–88 px a side, not square, like ImageNet's varied sizes) holds two large discs and one
smaller square, each of one of five hues (jittered in hue, saturation and brightness, shaded) on a noisy
greyish background. The class is the unordered pair of the discs' hues: 10 classes. The square's hue is
random, so the bag of colours in an image names the class only 60% of the time (when the square repeats a
disc's hue); beyond that a model must bind each colour to its object's shape and size. A small softmax ViT
at 32 px passes 60% within ~100 steps and reaches ~90% after a few hundred.
"""
from __future__ import annotations

import colorsys
import itertools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HUES = {"red": 0.0, "yellow": 0.15, "green": 0.33, "blue": 0.6, "magenta": 0.83}
CLASSES = tuple(itertools.combinations(HUES, 2))  # 10 unordered pairs of hues


def wnid(label: int) -> str:
    return f"n{label + 1:08d}"


def hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value))


def draw(label: int, rng: np.random.Generator) -> np.ndarray:
    """One (H, W, 3) uint8 image of class `label`."""
    height, width = (int(v) for v in rng.integers(56, 89, size=2))
    background = hsv(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.3, 0.8))  # greyish, any tint
    coarse = rng.normal(0, 0.07, size=(height // 8 + 1, width // 8 + 1, 3))  # low-frequency coloured blotches
    image = background + np.kron(coarse, np.ones((8, 8, 1)))[:height, :width] + rng.normal(0, 0.05, (height, width, 3))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    side = min(height, width)
    placed: list[tuple[float, float, float]] = []
    distractor = list(HUES)[rng.integers(len(HUES))]
    for name, is_disc in ((CLASSES[label][0], True), (CLASSES[label][1], True), (distractor, False)):
        radius = side * (rng.uniform(0.14, 0.2) if is_disc else rng.uniform(0.1, 0.14))  # the square is smaller
        for _ in range(100):  # inside the image, not overlapping earlier objects
            cy, cx = rng.uniform(radius, height - radius), rng.uniform(radius, width - radius)
            if all(np.hypot(cy - y, cx - x) > radius + r + 2 for y, x, r in placed):
                break
        placed.append((cy, cx, radius))
        dy, dx = ys - cy, xs - cx
        outline = np.hypot(dy, dx) <= radius if is_disc else np.maximum(abs(dy), abs(dx)) <= 0.85 * radius
        hue, saturation = HUES[name] + rng.uniform(-0.04, 0.04), rng.uniform(0.55, 1.0)
        shades = [hsv(hue, saturation, rng.uniform(0.45, 1.0)) for _ in range(2)]
        image[outline] = shades[0] + (shades[1] - shades[0]) * (dy[outline, None] + radius) / (2 * radius)  # shaded
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_synthetic_imagenet(root: Path, train_per_class: int = 100, val_per_class: int = 20, seed: int = 0) -> None:
    """Write the stand-in under `root` (the folder that would hold the ILSVRC2012 archives)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = {wnid(label): (f"synthetic {a} and {b}",) for label, (a, b) in enumerate(CLASSES)}
    for label in range(len(CLASSES)):
        folder = root / "train" / wnid(label)
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(train_per_class):
            Image.fromarray(draw(label, rng)).save(folder / f"{wnid(label)}_{k}.JPEG", quality=90)
    val_labels = rng.permutation(np.repeat(np.arange(len(CLASSES)), val_per_class))  # upstream: shuffled ids
    for number, label in enumerate(val_labels.tolist(), start=1):
        folder = root / "val" / wnid(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw(label, rng)).save(folder / f"ILSVRC2012_val_{number:08d}.JPEG", quality=90)
    torch.save((names, [wnid(label) for label in val_labels.tolist()]), root / "meta.bin")
