"""Caches written whole or not at all, by any number of processes at once.

Two runs started side by side (a sweep by hand, data-parallel ranks) may build the same cache together: each
writes its own temporary copy beside the target (named with its process id, so no two writers share one) and
renames it over the target only once complete, so a reader never sees half a file, and a writer that
fails leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`, this process's own; when the block ends without an error it is
    renamed to `path` (a folder stays as another process left it if that one finished first), otherwise it is
    removed."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        yield partial
        try:
            os.replace(partial, path)
        except OSError:
            if not (partial.is_dir() and path.is_dir()):  # a non-empty folder cannot be replaced: keep the one there
                raise
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
