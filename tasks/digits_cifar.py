"""Real handwritten digits in the CIFAR-10 layout: scikit-learn's copy of the UCI optical digits (1,797 images,
8x8, 16 grey levels, ten writers' classes 0-9), upscaled to 32x32 RGB (bilinear) and split 80/20 per class.

    python -m tasks.prepare cifar10 --synthetic --option stand_in=digits --root D

A stand-in made of real data nobody here drew: small, so it trains on a CPU, and real, so mechanism gaps seen
on it are not artefacts of a generator. It ships inside scikit-learn (no download).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .synthetic_cifar import write_cifar_files

TEST_FRACTION = 0.2


def digit_images(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) grey levels 0-16 -> (N, 3072) uint8, 3 equal channels of 32x32, channel-major."""
    grey = torch.from_numpy(images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    large = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    rgb = (large.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)  # (N, 3, 32, 32)
    return rgb.reshape(len(images), -1).numpy()


def write_digits_cifar(folder: Path, task_cls, seed: int = 0) -> None:
    """Write the digits into `folder` in the CIFAR-10 layout; the test split is a seeded 20% of each class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    data, labels = digit_images(digits.images), digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for label in range(10):
        members = np.flatnonzero(labels == label)
        test[rng.permutation(members)[:round(TEST_FRACTION * len(members))]] = True
    split = lambda mask: (data[mask], labels[mask].tolist())  # noqa: E731
    write_cifar_files(folder, task_cls, split(~test), split(test), [str(label) for label in range(10)])
