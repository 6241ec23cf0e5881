"""Reading the LRA release's Pathfinder-32 images (Linsley et al. 2018; Tay et al. 2021).

`pathfinder32/<difficulty>/metadata/<n>.npy` are text files (despite the name): one line per image,
space-separated, field 0 the image folder (`imgs/<n>`), field 1 the file name, field 3 the label
(1 = the two dots are joined). Images are 32 x 32 8-bit grayscale PNGs; the release has a few empty
files, which the LRA pipelines skip, as we do. LRA's "Pathfinder" is the hard set,
`curv_contour_length_14` (199,999 usable images).

Decoding 200k PNGs takes a while, so the pixels are cached once as `<difficulty>.npz` (uint8 (N, 1024)
and labels, in metadata order) beside the difficulty folders, rebuilt when a metadata file is newer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lab.download import DataError
from lab.files import written_whole


def metadata_files(folder: Path) -> list[Path]:
    """The metadata files of a difficulty folder, in numeric order."""
    files = [p for p in (Path(folder) / "metadata").glob("*.npy")]
    return sorted(files, key=lambda p: (int(p.stem) if p.stem.isdigit() else 1 << 62, p.name))


def read_images(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """All non-empty images of `folder` as uint8 (N, 1024) row-major pixels, and their labels (N,)."""
    from PIL import Image

    pixels, labels = [], []
    for meta in metadata_files(folder):
        for number, line in enumerate(meta.read_text().splitlines(), start=1):
            fields = line.split(" ")
            if len(fields) < 4 or not fields[3].isdigit():
                raise DataError(f"{meta}:{number} is not a Pathfinder metadata line: {line[:80]!r}")
            path = Path(folder) / fields[0] / fields[1]
            if path.stat().st_size == 0:
                continue
            with Image.open(path) as png:
                image = np.asarray(png.convert("L"), dtype=np.uint8)
            if image.shape != (32, 32):
                raise DataError(f"{path} is {image.shape[1]} x {image.shape[0]} pixels, not 32 x 32")
            pixels.append(image.reshape(-1))
            labels.append(int(fields[3]))
    if not pixels:
        raise DataError(f"no Pathfinder images listed in {Path(folder) / 'metadata'}")
    return np.stack(pixels), np.asarray(labels, dtype=np.int64)


def load_cached(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """`read_images(folder)`, from the cache when it is newer than every metadata file."""
    folder = Path(folder)
    cache = folder.with_name(folder.name + ".npz")
    newest = max((p.stat().st_mtime for p in metadata_files(folder)), default=0.0)
    if cache.exists() and cache.stat().st_mtime >= newest:
        with np.load(cache) as stored:
            return stored["pixels"], stored["labels"]
    print(f"decoding the Pathfinder images of {folder} once (cached in {cache.name})", flush=True)
    pixels, labels = read_images(folder)
    with written_whole(cache) as partial, open(partial, "wb") as handle:  # a handle: np.savez would add ".npz"
        np.savez(handle, pixels=pixels, labels=labels)
    return pixels, labels

