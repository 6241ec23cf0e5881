"""Fetching datasets safely: atomic downloads, checksum verification, path-traversal-proof extraction.

Every failure a user can fix (no network, wrong checksum, missing file) raises `DataError` with one
line saying what to download from where and where to put it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path


class DataError(RuntimeError):
    """A dataset is missing or corrupt; the message says how to fix it. `train.py` exits 2 on it."""


def file_digest(path: Path, algorithm: str = "md5") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, checksum: str | None, algorithm: str = "md5") -> None:
    """Raise DataError if `path`'s digest differs from `checksum` (None = no check)."""
    if checksum is None:
        return
    actual = file_digest(path, algorithm)
    if actual != checksum:
        raise DataError(f"{path} is corrupt: {algorithm} {actual}, expected {checksum}; delete it and download again")


def download(url: str, dest: Path, checksum: str | None = None, algorithm: str = "md5",
             timeout: float = 60.0) -> Path:
    """Download `url` to `dest` (written as `dest.part`, verified, then renamed), unless a verified copy exists."""
    dest = Path(dest)
    if dest.exists():
        verify(dest, checksum, algorithm)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    print(f"downloading {url} -> {dest}", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise DataError(f"could not download {url} ({reason}); download it by hand and put it at {dest}") from None
    try:
        verify(partial, checksum, algorithm)
    except DataError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, dest)
    return dest


def _safe_target(root: Path, member_name: str) -> Path:
    target = (root / member_name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(f"archive member '{member_name}' would be written outside {root}; refusing to extract")
    return target


def extract(archive: Path, dest: Path) -> None:
    """Extract a .tar(.gz|.bz2|.xz) or .zip into `dest`, refusing absolute paths, `..` and links out of it."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                _safe_target(dest, member.filename)
            zf.extractall(dest)
        return
    if not tarfile.is_tarfile(archive):
        raise DataError(f"{archive} is neither a tar nor a zip archive; delete it and download again")
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _safe_target(dest, member.name)
            if member.issym() or member.islnk():
                _safe_target(dest, os.path.join(os.path.dirname(member.name), member.linkname))
            if member.isdev():
                raise DataError(f"archive member '{member.name}' is a device file; refusing to extract")
        tf.extractall(dest, members=members, filter="data")
