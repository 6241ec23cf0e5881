"""Reading the LRA release's AAN retrieval pairs (Radev et al. 2013; Tay et al. 2021): does one paper cite the other?

`tsv_data/new_aan_pairs.{train,eval,test}.tsv`: no header, one pair per line, tab-separated
`label  id1  id2  text1  text2` (label 0 or 1, written as a number such as `1.0`), read without
quote handling, as the LRA pipeline does. Texts are kept as raw bytes (the task is byte-level).
Papers appear in many pairs, so each distinct (truncated) text is stored once and pairs index it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.download import DataError

FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}


@dataclass
class PairSplit:
    first: list[int]  # index into the shared documents, per pair
    second: list[int]
    labels: list[int]


def read_pairs(folder: Path, max_bytes: int) -> tuple[list[bytes], dict[str, PairSplit]]:
    """The distinct documents (each cut to `max_bytes`) of all three splits, and each split's pairs."""
    documents: dict[bytes, int] = {}
    splits = {}
    for split, name in FILES.items():
        path = Path(folder) / name
        try:
            lines = path.read_bytes().split(b"\n")
        except OSError as error:
            raise DataError(f"cannot read {path} ({error.strerror})") from None
        pairs = PairSplit([], [], [])
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.rstrip(b"\r").split(b"\t")
            try:
                if len(fields) != 5:
                    raise ValueError(f"{len(fields)} fields, expected 5")
                label = float(fields[0])
                if label not in (0.0, 1.0):
                    raise ValueError(f"label {label}")
            except ValueError as error:
                raise DataError(f"{path}:{number} is not an AAN pair line ({error})") from None
            pairs.first.append(documents.setdefault(fields[3][:max_bytes], len(documents)))
            pairs.second.append(documents.setdefault(fields[4][:max_bytes], len(documents)))
            pairs.labels.append(int(label))
        splits[split] = pairs
    return list(documents), splits
