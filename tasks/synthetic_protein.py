"""A small, learnable stand-in for FLIP `scl` written in its CSV format (for tests and demos).

Each of the 10 classes (named like FLIP's) owns a 5-residue motif; a sequence of class c is random
background residues with two copies of c's motif near one terminus (the N-terminus for even classes,
the C-terminus for odd ones, like targeting signals) and one more at a random place. Lengths vary
(30-300), a few X/U residues appear, and some training rows carry `validation=True`, so the real
reader's split logic, cleaning and truncation are all exercised.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .protein_data import FLIP_COLUMNS, STANDARD_RESIDUES

CLASS_NAMES = ("Cytoplasm", "Nucleus", "Cell.membrane", "Mitochondrion", "Endoplasmic.reticulum",
               "Lysosome/Vacuole", "Golgi.apparatus", "Peroxisome", "Extracellular", "Plastid")
MOTIF_LENGTH = 5


def class_motifs(rng: np.random.Generator) -> list[str]:
    letters = np.array(list(STANDARD_RESIDUES))
    return ["".join(rng.choice(letters, MOTIF_LENGTH)) for _ in CLASS_NAMES]


def synthetic_sequence(label: int, motifs: list[str], rng: np.random.Generator,
                       min_length: int = 30, max_length: int = 300) -> str:
    length = int(rng.integers(min_length, max_length + 1))
    residues = list(rng.choice(np.array(list(STANDARD_RESIDUES)), length))
    residues[int(rng.integers(length))] = "X" if rng.random() < 0.5 else "U"
    signal = motifs[label] * 2
    start = 1 if label % 2 == 0 else length - len(signal)
    residues[start:start + len(signal)] = signal
    middle = int(rng.integers(len(signal) + 1, length - len(signal) - MOTIF_LENGTH))
    residues[middle:middle + MOTIF_LENGTH] = motifs[label]
    residues[0] = "M"
    return "".join(residues)


def write_synthetic_flip_scl(path: Path, *, train_per_class: int = 60, val_per_class: int = 10,
                             test_per_class: int = 20, seed: int = 0) -> Path:
    """Write `path` (a FLIP split CSV) with shuffled rows; returns the path."""
    rng = np.random.default_rng(seed)
    motifs = class_motifs(rng)
    rows = []
    for set_name, validation, per_class in (("train", False, train_per_class), ("train", True, val_per_class),
                                            ("test", False, test_per_class)):
        for label in range(len(CLASS_NAMES)):
            for _ in range(per_class):
                rows.append((synthetic_sequence(label, motifs, rng), CLASS_NAMES[label], set_name, validation))
    order = rng.permutation(len(rows))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FLIP_COLUMNS)
        writer.writerows(rows[i] for i in order)
    return path
