"""The Long Range Arena release archive (Tay et al. 2021): where it comes from and how a task gets its part.

`lra_release.gz` (a gzipped tar of ~7.7 GB, the file the LRA repository's `dataset_setup.sh` fetches)
holds `listops-1000/` (ListOps TSVs), `tsv_data/` (the AAN retrieval pairs) and `pathfinder32/` ...
`pathfinder256/`, nested under one or two `lra_release/` folders depending on how it was unpacked.
Tasks therefore look for their folder **by name** a few levels below the data root, never at a fixed
depth, and extract only that folder from the archive (one streaming pass; the rest is skipped).

    <data.root>/lra_release.gz                                   downloaded (resumable) or put there by hand
    <data.root>/lra_release/lra_release/listops-1000/...         what extraction writes (as in the archive)

No checksum of the archive is published; Google Cloud Storage states the object's MD5 in its
response headers and `lab.download` verifies that. Corruption of a local copy shows up as a gzip
CRC error during extraction.
"""
from __future__ import annotations

import os
from pathlib import Path

from lab.download import DataError, download as download_file, extract

URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
ARCHIVE = "lra_release.gz"
SEARCH_DEPTH = 3  # <root>/lra_release/lra_release/<folder>


def find_folder(root: Path, name: str, required: tuple[str, ...] = ()) -> Path | None:
    """The shallowest folder called `name` at most SEARCH_DEPTH levels below `root` that holds every
    path in `required` (breadth first, directories only: cheap even beside 200k image files)."""
    level = [Path(root)]
    for _ in range(SEARCH_DEPTH):
        below = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
            except OSError:
                continue
            for entry in entries:
                if not entry.is_dir():
                    continue
                path = Path(entry.path)
                if entry.name == name and all((path / item).exists() for item in required):
                    return path
                below.append(path)
        level = below
    return None


def extract_folder(root: Path, subpath: str, *, download: bool, what: str) -> None:
    """Extract the archive's members below `subpath` (a folder name, or names joined by "/", found at any
    depth) into `root`; download the archive first if it is missing and `download` is set. `what` names
    the task in error messages."""
    root = Path(root)
    archive = root / ARCHIVE
    if not archive.exists():
        if not download:
            raise DataError(f"{what} needs the LRA release: download {URL} (~7.7 GB) to {archive}, "
                            f"or extract its {subpath}/ folder below {root}")
        print(f"{what}: the LRA release is ~7.7 GB; an interrupted download resumes when run again", flush=True)
        download_file(URL, archive, timeout=120)
    print(f"extracting {subpath}/ from {archive} (one pass over the whole archive)", flush=True)
    wanted = tuple(subpath.split("/"))
    extract(archive, root, select=lambda member: _has_run(Path(member).parts[:-1], wanted))


def _has_run(parts: tuple[str, ...], run: tuple[str, ...]) -> bool:
    """Whether `run` occurs as consecutive items of `parts`."""
    return any(parts[i:i + len(run)] == run for i in range(len(parts) - len(run) + 1))
