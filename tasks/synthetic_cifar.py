"""A small, learnable stand-in for CIFAR written in the upstream pickle layout (for tests and demos).

Each class is a colour and a stripe pattern (angle and frequency) with random phase, brightness and
noise, so classes differ visibly and a small ViT separates them within a few epochs. The files are
exactly the upstream ones: `data_batch_1..5`, `test_batch`, `batches.meta` (CIFAR-10) or `train`,
`test`, `meta` (CIFAR-100), pickled dicts with `data` (uint8, N x 3072, channel-major) and labels.
"""
from __future__ import annotations

import colorsys
import math
import pickle
from pathlib import Path

import numpy as np

PATTERNS = 10


def class_images(label: int, count: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 3, 32, 32) uint8 images of class `label`."""
    hue = (label % 10) / 10.0
    pattern = label if num_classes <= 10 else label // 10
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9))[:, None, None]  # (3, 1, 1)
    angle = math.pi * pattern / PATTERNS
    frequency = 2 * math.pi * (2 + pattern % 3) / 32
    ys, xs = np.mgrid[0:32, 0:32].astype(np.float64)
    images = np.empty((count, 3, 32, 32), dtype=np.uint8)
    for i in range(count):
        phase = rng.uniform(0, 2 * math.pi)
        stripes = 0.5 + 0.5 * np.sin(frequency * (xs * math.cos(angle) + ys * math.sin(angle)) + phase)
        brightness = rng.uniform(0.7, 1.1)
        image = brightness * (0.55 * colour + 0.45 * stripes[None]) + rng.normal(0, 0.06, (3, 32, 32))
        images[i] = np.clip(image * 255, 0, 255).astype(np.uint8)
    return images


def _split(num_classes: int, per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    data = np.concatenate([class_images(int(c), 1, num_classes, rng) for c in labels])
    return data.reshape(len(labels), -1), labels.tolist()


def _dump(path: Path, entry: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(entry, handle, protocol=2)


def write_synthetic_cifar(folder: Path, task_cls, train_per_class: int | None = None,
                          test_per_class: int | None = None, seed: int = 0) -> None:
    """Write a synthetic dataset into `folder` in the layout `task_cls` (Cifar10 or Cifar100) reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cifar100 = task_cls.label_key == "fine_labels"
    num_classes = 100 if cifar100 else 10
    train_per_class = train_per_class or (20 if cifar100 else 200)
    test_per_class = test_per_class or (5 if cifar100 else 50)
    names = [f"synthetic_{i:02d}" for i in range(num_classes)]
    train_data, train_labels = _split(num_classes, train_per_class, rng)
    test_data, test_labels = _split(num_classes, test_per_class, rng)
    if cifar100:
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
