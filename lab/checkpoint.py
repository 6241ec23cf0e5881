"""Checkpoints: one dict per file, written atomically, loaded without executing pickled code.

A run directory is `<output_dir>/<run name>/<timestamp>/` holding `last.pt` (the latest state, for
resuming), `best.pt` (the best validation score, for the final test) and `config.yaml`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from .registry import ConfigError


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"resume checkpoint {path} does not exist") from None
    except Exception as error:  # truncated file, or an object that weights_only refuses
        raise ConfigError(f"cannot load checkpoint {path}: {str(error).splitlines()[0]}") from None


def new_run_dir(output_dir: Path, run_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = Path(output_dir) / run_name / stamp
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = Path(output_dir) / run_name / f"{stamp}-{suffix}"
    candidate.mkdir(parents=True)
    return candidate


def find_resumable(output_dir: Path, run_name: str, fingerprint: str, planned_steps: int) -> Path | None:
    """The newest `last.pt` of `run_name` whose config fingerprint matches and that has steps left."""
    runs = sorted((Path(output_dir) / run_name).glob("*/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in runs:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            continue
        if state.get("fingerprint") == fingerprint and state.get("step", 0) < planned_steps:
            return path
    return None
