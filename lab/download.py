"""Fetching datasets safely: atomic, resumable downloads with progress, checksum verification, and
path-traversal-proof extraction (of a whole archive or of the members a task needs).

Every failure a user can fix (no network, wrong checksum, missing file) raises `DataError` with one
line saying what to download from where and where to put it.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import lzma
import os
import re
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Callable


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
    """Download `url` to `dest` (written as `dest.part`, verified, then renamed), unless a verified copy exists.

    A `dest.part` left by an interrupted download is resumed with an HTTP Range request (a server that
    ignores it sends the whole file, which then replaces the part). Progress is printed about every
    5%. Without `checksum`, an MD5 the server states for the whole file (Google Cloud Storage's
    `x-goog-hash`, or `Content-MD5`) is verified instead.
    """
    dest = Path(dest)
    if dest.exists():
        verify(dest, checksum, algorithm)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    print(f"downloading {url} -> {dest}" + (f" (resuming at {offset / 1e6:.1f} MB)" if offset else ""), flush=True)
    total = stated_md5 = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if offset and getattr(response, "status", None) != 206:
                offset = 0  # the server sent the whole file
            total = _expected_size(response, offset)
            stated_md5 = _stated_md5(response.headers)
            with open(partial, "ab" if offset else "wb") as out:
                _copy_with_progress(response, out, offset, total)
    except urllib.error.HTTPError as error:
        if not (offset and error.code == 416):  # 416: nothing left after `offset`: the part is complete
            raise DataError(f"could not download {url} (HTTP {error.code} {error.reason}); "
                            f"download it by hand and put it at {dest}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error.__class__.__name__
        kept = partial.exists() and partial.stat().st_size > 0
        raise DataError(f"could not download {url} ({reason}); "
                        + ("run again to resume it, or " if kept else "")
                        + f"download it by hand and put it at {dest}") from None
    size = partial.stat().st_size
    if total is not None and size != total:
        raise DataError(f"could not download {url} (got {size} of {total} bytes); run again to resume it, "
                        f"or download it by hand and put it at {dest}")
    try:
        if checksum is None and stated_md5 is not None:
            verify(partial, stated_md5, "md5")
        verify(partial, checksum, algorithm)
    except DataError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, dest)
    return dest


def _expected_size(response, offset: int) -> int | None:
    """The file's full size in bytes from Content-Range (partial response) or Content-Length, if sent."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _stated_md5(headers) -> str | None:
    """The hex MD5 the server states for the whole object, if any."""
    stated = re.search(r"md5=([A-Za-z0-9+/=]+)", headers.get("x-goog-hash", "")) or \
        re.fullmatch(r"([A-Za-z0-9+/=]+)", headers.get("Content-MD5", "").strip())
    if stated is None:
        return None
    try:
        return base64.b64decode(stated.group(1), validate=True).hex()
    except ValueError:
        return None


def _copy_with_progress(response, out, done: int, total: int | None, chunk: int = 1 << 20) -> None:
    next_report = 0.05
    started, start_bytes = time.monotonic(), done
    while block := response.read(chunk):
        out.write(block)
        done += len(block)
        if total and done / total >= next_report:
            rate = (done - start_bytes) / max(time.monotonic() - started, 1e-6)
            print(f"  {done / 1e6:,.0f} / {total / 1e6:,.0f} MB ({100 * done / total:.0f}%, {rate / 1e6:.1f} MB/s)",
                  flush=True)
            next_report = done / total + 0.05


def _safe_target(root: Path, member_name: str, what: str = "archive member") -> Path:
    target = (root / member_name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(f"{what} '{member_name}' would be written outside {root}; refusing to extract")
    return target


def extract(archive: Path, dest: Path, select: Callable[[str], bool] | None = None) -> None:
    """Extract a .tar(.gz|.bz2|.xz) or .zip into `dest`, refusing absolute paths, `..`, links out of it and
    device files; a corrupt archive (a bad CRC, a truncated stream) is reported, with its fix.

    With `select`, only the members whose name it accepts are extracted; a tar is then read in one
    streaming pass (for multi-gigabyte archives of which a task needs a part).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, select)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest) if select is None else _extract_tar_members(archive, dest, select)
        else:
            raise DataError(f"{archive} is neither a tar nor a zip archive; delete it and download again")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as error:
        if isinstance(error, tarfile.FilterError):  # tarfile's own safety filter caught what the checks missed
            raise DataError(f"archive {archive}: {error}; refusing to extract") from None
        raise DataError(f"{archive} is corrupt ({error}); delete it and download again") from None


def _extract_zip(archive: Path, dest: Path, select: Callable[[str], bool] | None) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if select is None or select(m.filename)]
        for member in members:
            _safe_target(dest, member.filename)
        damaged = zf.testzip()  # every member's CRC-32
        if damaged is not None:
            raise zipfile.BadZipFile(f"member '{damaged}' fails its CRC check")
        zf.extractall(dest, members=members)


def _check_tar_member(dest: Path, member: tarfile.TarInfo) -> None:
    _safe_target(dest, member.name)
    if member.issym():  # relative to the link's folder
        _safe_target(dest, os.path.join(os.path.dirname(member.name), member.linkname), "link target")
    if member.islnk():  # a hard link names another member, relative to the archive's root
        _safe_target(dest, member.linkname, "link target")
    if member.isdev():
        raise DataError(f"archive member '{member.name}' is a device file; refusing to extract")


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()  # reads the whole stream: a truncated or damaged one fails here
        for member in members:
            _check_tar_member(dest, member)
        tf.extractall(dest, members=members, filter="data")


def _extract_tar_members(archive: Path, dest: Path, select: Callable[[str], bool]) -> None:
    with tarfile.open(archive, "r|*") as tf:  # one pass; a damaged stream fails where it breaks
        for member in tf:
            if select(member.name):
                _check_tar_member(dest, member)
                tf.extract(member, dest, filter="data")
