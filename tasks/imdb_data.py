"""The Large Movie Review Dataset (Maas et al. 2011, `aclImdb_v1.tar.gz`): fetch, extract, read.

Layout (the archive's): `aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`, one review per file on one
line, ratings 7-10 (pos) and 1-4 (neg), 12,500 per folder; `aclImdb/train/unsup/` holds 50,000
unlabelled reviews (rating 0) that are **not** a class and are neither extracted nor read, and
`imdb.vocab`, `README` and bag-of-words files beside them. Only the four labelled folders are extracted.
Reviews are read in file-id order, so splits are reproducible; HTML line breaks (`<br />`) can be
replaced by spaces (`clean=True`; the LRA text task keeps the raw bytes, as tfds serves them).
"""
from __future__ import annotations

import re
from pathlib import Path

from lab.download import DataError, download as download_file, extract, verify

URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
ARCHIVE = "aclImdb_v1.tar.gz"
FOLDER = "aclImdb"
CLASSES = ("neg", "pos")  # label 0, 1
LABELLED = tuple(f"{split}/{name}" for split in ("train", "test") for name in CLASSES)
REVIEW_NAME = re.compile(r"(\d+)_(\d+)\.txt")
LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def is_extracted(root: Path) -> bool:
    return all((Path(root) / FOLDER / folder).is_dir() for folder in LABELLED)


def prepare_aclimdb(root: Path, download: bool) -> None:
    """Download (md5-verified) and extract the labelled reviews of aclImdb below `root`, unless present."""
    root = Path(root)
    if is_extracted(root):
        return
    archive = root / ARCHIVE
    if archive.exists():
        verify(archive, MD5)
    elif download:
        download_file(URL, archive, MD5)
    else:
        raise DataError(f"IMDB not found under {root}: download {URL} (md5 {MD5}) and put it at {archive}, "
                        f"or extract it there as {root / FOLDER}")
    wanted = {f"{FOLDER}/{folder}" for folder in LABELLED}
    extract(archive, root, select=lambda member: str(Path(member).parent) in wanted)


def read_reviews(root: Path, split: str, clean: bool = True) -> tuple[list[str], list[int]]:
    """The labelled reviews of `split` ("train" or "test"): texts and labels (0 neg, 1 pos), neg first,
    each folder in file-id order."""
    texts, labels = [], []
    for label, name in enumerate(CLASSES):
        folder = Path(root) / FOLDER / split / name
        files = []
        for path in folder.iterdir():
            match = REVIEW_NAME.fullmatch(path.name)
            if match is None:
                raise DataError(f"unexpected file {path} (reviews are named <id>_<rating>.txt); "
                                f"delete {Path(root) / FOLDER} and prepare the data again")
            files.append((int(match.group(1)), path))
        for _, path in sorted(files):
            text = path.read_text(encoding="utf-8", errors="replace")
            texts.append(LINE_BREAK.sub(" ", text) if clean else text)
            labels.append(label)
    if not texts:
        raise DataError(f"no reviews in {Path(root) / FOLDER / split}; delete it and prepare the data again")
    return texts, labels
