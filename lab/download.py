"""Fetching datasets safely: atomic downloads, checksum verification, path-traversal-proof extraction.

Every failure a user can fix (no network, wrong checksum, missing file) raises `DataError` with one
line saying what to download from where and where to put it.
"""
from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path


class DataError(RuntimeError):
    """A dataset is missing or corrupt; the message says how to fix it. `train.py` exits 2 on it."""


def require_folder(path: Path, label: str) -> None:
    """DataError unless `path` is a folder or can become one (no file where it or a parent folder should be)."""
    for candidate in (Path(path).absolute(), *Path(path).absolute().parents):
        if candidate.exists():
            if not candidate.is_dir():
                problem = "is a file" if candidate == Path(path).absolute() else f"cannot be made: {candidate} is a file"
                raise DataError(f"{label} {path} {problem}; point it at a folder (created if missing)")
            return


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


def _safe_target(root: Path, member_name: str, what: str = "archive member") -> Path:
    target = (root / member_name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(f"{what} '{member_name}' would be written outside {root}; refusing to extract")
    return target


def extract(archive: Path, dest: Path) -> None:
    """Extract a .tar(.gz|.bz2|.xz) or .zip into `dest`, refusing absolute paths, `..`, links out of it and
    device files; a corrupt archive (a bad CRC, a truncated stream) is reported, with its fix."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest)
        else:
            raise DataError(f"{archive} is neither a tar nor a zip archive; delete it and download again")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as error:
        if isinstance(error, tarfile.FilterError):  # tarfile's own safety filter caught what the checks missed
            raise DataError(f"archive {archive}: {error}; refusing to extract") from None
        raise DataError(f"{archive} is corrupt ({error}); delete it and download again") from None


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            _safe_target(dest, member.filename)
        damaged = zf.testzip()  # every member's CRC-32
        if damaged is not None:
            raise zipfile.BadZipFile(f"member '{damaged}' fails its CRC check")
        zf.extractall(dest)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()  # reads the whole stream: a truncated or damaged one fails here
        for member in members:
            _safe_target(dest, member.name)
            if member.issym():  # relative to the link's folder
                _safe_target(dest, os.path.join(os.path.dirname(member.name), member.linkname), "link target")
            if member.islnk():  # a hard link names another member, relative to the archive's root
                _safe_target(dest, member.linkname, "link target")
            if member.isdev():
                raise DataError(f"archive member '{member.name}' is a device file; refusing to extract")
        tf.extractall(dest, members=members, filter="data")
