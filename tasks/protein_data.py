"""Protein subcellular-localization data: the two sources, sequence cleaning, tokens and truncation.

Sources (each gives train / val / test lists of (sequence, label) and the class names in index order):

* `scl2205` (default, no download): the SCL2205 set shipped inside the PyPI package
  `p-scldata==2025.6.0` (later releases ship no data), read through its loader
  `scldata.loader.load("train" | "eval" | "heldout")`: 15,183 / 1,260 / 2,631 UniProtKB sequences,
  13 classes (9 single locations, 4 multi-location combinations), homology-reduced splits. Class
  indices follow the package's `labels.json` (`label_to_index`), so they are stable across runs.
* `flip_scl`: FLIP's `scl` "balanced" split (Dallago et al. 2021; DeepLoc 1.0 sequences, 10 classes),
  the split used by the constrained-SWE paper. Fetched from the FLIP repository, pinned at a commit:
  `splits/scl/splits.zip` -> `splits/balanced.csv` with columns `sequence,target,set,validation`
  (the same CSV is `data/annotation/scl/balanced.csv` in Zenodo record 10631963's data.tar.gz, a much
  larger archive; a copy placed at <root>/flip_scl/splits/balanced.csv is used as is).
  train = set=="train" & !validation, val = set=="train" & validation, test = set=="test"; labels
  indexed in order of first appearance in the training rows. FLIP publishes no checksum for the
  archive: it is pinned by the commit in its URL, and extraction checks every member's CRC-32 (a
  damaged or truncated download is refused with its fix), then the CSV's columns and labels.

Sequences are upper-cased; letters outside the 25-letter protein alphabet (20 standard + X, B, U, Z, O)
become X; anything that is not a letter is an error. The learned featurizer folds the rare residues
(B, U, Z, O) into X as well: 21 residue tokens plus the padding id 0.
"""
from __future__ import annotations

import csv
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.download import DataError, download as download_file, extract
from lab.registry import ConfigError

STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
PROTEIN_LETTERS = STANDARD_RESIDUES + "XBUZO"
PAD_ID = 0
UNKNOWN_ID = len(STANDARD_RESIDUES) + 1  # X (and the rare residues folded into it)
VOCAB_SIZE = UNKNOWN_ID + 1  # pad + 20 standard + X

SCLDATA_PIN = "p-scldata==2025.6.0"
FLIP_COMMIT = "4363d5e07f096e4e4a3d0bfd7e6a5a21b2b79dad"
FLIP_SCL_URL = f"https://github.com/J-SNACKKB/FLIP/raw/{FLIP_COMMIT}/splits/scl/splits.zip"
FLIP_SCL_FOLDER = "flip_scl"  # below the data root: splits.zip and its extracted splits/balanced.csv
FLIP_SCL_CSV = Path("splits") / "balanced.csv"
FLIP_COLUMNS = ("sequence", "target", "set", "validation")


@dataclass
class ProteinSplits:
    """Sequences and integer labels per split, and the class names in index order."""

    sequences: dict[str, list[str]]
    labels: dict[str, list[int]]
    class_names: list[str]


# -- sequences and tokens ------------------------------------------------------------------------
def _cleaning_table() -> np.ndarray:
    table = np.full(256, 0, dtype=np.uint8)  # 0 = not a letter
    for letter in range(ord("A"), ord("Z") + 1):
        table[letter] = table[letter + 32] = ord("X")
    for letter in PROTEIN_LETTERS:
        table[ord(letter)] = table[ord(letter.lower())] = ord(letter)
    return table


def _token_table() -> np.ndarray:
    table = np.full(256, UNKNOWN_ID, dtype=np.int64)
    for index, letter in enumerate(STANDARD_RESIDUES, start=1):
        table[ord(letter)] = index
    return table


CLEANING_TABLE, TOKEN_TABLE = _cleaning_table(), _token_table()


def clean_sequence(sequence: str, where: str = "sequence") -> str:
    """Upper-case; letters outside the protein alphabet -> X; DataError on anything else."""
    raw = np.frombuffer(sequence.strip().encode("latin-1", errors="replace"), dtype=np.uint8)
    cleaned = CLEANING_TABLE[raw]
    if len(raw) == 0 or not cleaned.all():
        bad = sorted({chr(c) for c in raw[cleaned == 0]}) if len(raw) else ["(empty)"]
        raise DataError(f"{where} contains characters that are not amino-acid letters: {''.join(bad)!r}")
    return cleaned.tobytes().decode("ascii")


def tokenize(sequence: str) -> np.ndarray:
    """Token ids (int64) of a cleaned sequence: 1..20 standard residues, 21 = X/B/U/Z/O; 0 is padding."""
    return TOKEN_TABLE[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]


def termini_slices(length: int, max_length: int, c_terminal: int) -> tuple[slice, slice]:
    """The N- and C-terminal parts kept when a sequence of `length` residues is cut to `max_length`:
    the first max_length - c_terminal residues and the last c_terminal (targeting signals sit at both ends)."""
    if not 0 <= c_terminal < max_length:
        raise ConfigError(f"task.c_terminal must be in [0, max_length), got {c_terminal} with max_length {max_length}")
    if length <= max_length:
        return slice(0, length), slice(length, length)
    return slice(0, max_length - c_terminal), slice(length - c_terminal, length)


def truncate(sequence: str, max_length: int, c_terminal: int) -> str:
    head, tail = termini_slices(len(sequence), max_length, c_terminal)
    return sequence[head] + sequence[tail]


# -- SCL2205 (from the installed package) --------------------------------------------------------
def scldata_folder() -> Path:
    """The installed package's data folder; DataError if the package is missing."""
    try:
        return Path(str(importlib.resources.files("scldata"))) / "data"
    except ModuleNotFoundError:
        raise DataError(f"SCL2205 needs the package {SCLDATA_PIN}: `pip install {SCLDATA_PIN}`") from None


def check_scldata() -> None:
    """DataError unless the SCL2205 files of the pinned package are installed."""
    folder = scldata_folder()
    missing = [n for n in ("scl2205.csv", "splits.json", "labels.json", "entries.json") if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)} (only {SCLDATA_PIN} ships the data): "
                        f"`pip install --force-reinstall {SCLDATA_PIN}`")


def load_scl2205() -> ProteinSplits:
    check_scldata()
    import scldata.loader as loader

    label_to_index = loader.labels["label_to_index"]
    class_names = [loader.labels["index_to_label"][str(i)] for i in range(len(label_to_index))]
    sequences, labels = {}, {}
    for split, key in (("train", "train"), ("val", "eval"), ("test", "heldout")):
        frame = loader.load(key)
        sequences[split] = [clean_sequence(s, f"SCL2205 entry {e}") for e, s in zip(frame.index, frame["seq"])]
        labels[split] = [label_to_index[name] for name in frame["scl"]]
    return ProteinSplits(sequences, labels, class_names)


# -- FLIP scl (balanced) -------------------------------------------------------------------------
def flip_scl_csv(root: Path) -> Path:
    return Path(root) / FLIP_SCL_FOLDER / FLIP_SCL_CSV


def prepare_flip_scl(root: Path, download: bool) -> None:
    """Make <root>/flip_scl/splits/balanced.csv exist: extract splits.zip, downloading it if allowed."""
    if flip_scl_csv(root).is_file():
        return
    archive = Path(root) / FLIP_SCL_FOLDER / "splits.zip"
    if not archive.exists():
        if not download:
            raise DataError(f"FLIP scl not found under {root}: download {FLIP_SCL_URL} to {archive}, "
                            f"or put FLIP's balanced.csv at {flip_scl_csv(root)}")
        download_file(FLIP_SCL_URL, archive)
    extract(archive, archive.parent)
    if not flip_scl_csv(root).is_file():
        raise DataError(f"{archive} holds no {FLIP_SCL_CSV}; delete it and download {FLIP_SCL_URL} again")


def read_flip_csv(path: Path) -> ProteinSplits:
    """Read a FLIP split CSV (sequence,target,set,validation) into train/val/test."""
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in FLIP_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} is not a FLIP split CSV: missing columns {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            validation = row["validation"].strip().lower() in ("true", "1")
            split = {"train": "val" if validation else "train", "test": "test"}.get(row["set"].strip())
            if split is None:
                raise DataError(f"{path}:{line}: set must be 'train' or 'test', got {row['set']!r}")
            rows[split].append((clean_sequence(row["sequence"], f"{path}:{line}"), row["target"].strip()))
    class_names = list(dict.fromkeys(label for _, label in rows["train"]))  # order of first appearance
    index = {name: i for i, name in enumerate(class_names)}
    for split, pairs in rows.items():
        unseen = sorted({label for _, label in pairs} - index.keys())
        if unseen:
            raise DataError(f"{path}: {split} labels {unseen} never occur in the training rows")
        if not pairs:
            raise DataError(f"{path} has no {split} rows")
    return ProteinSplits({s: [seq for seq, _ in p] for s, p in rows.items()},
                         {s: [index[label] for _, label in p] for s, p in rows.items()}, class_names)
