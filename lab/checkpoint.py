"""Checkpoints: one dict per file, written atomically, loaded without executing pickled code.

A run directory is `<output_dir>/<run name>/<timestamp>/` holding `last.pt` (the latest state, for
resuming), `best.pt` (the best validation score, for the final test) and `config.yaml`. A write goes to a
hidden temporary file that is renamed over the checkpoint only once complete, so a crash or `kill -9`
mid-write leaves the previous checkpoint intact; a file that still cannot be read is reported, never
skipped silently.
"""
from __future__ import annotations

import os
import pickle
import re
import time
from pathlib import Path
from typing import Any

import torch

from .registry import ConfigError

CHECKPOINT_KEYS = ("model", "optimizer", "step", "epoch", "batch_in_epoch", "best_metric", "rng", "config",
                   "fingerprint", "mlflow_run_id")


def nonfinite_tensors(tree: Any, name: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in a nested dict/list that hold a NaN or an infinity."""
    if isinstance(tree, torch.Tensor):
        return [name] if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return [found for key, value in items for found in nonfinite_tensors(value, f"{name}.{key}" if name else str(key))]


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`; remove the temporary
    files that an interrupted earlier write left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        stale.unlink(missing_ok=True)


def load_checkpoint(path: Path, required: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """The checkpoint dict at `path` holding the `required` entries (a resume needs `CHECKPOINT_KEYS`), or
    ConfigError saying in one line why it cannot be used."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors read on use
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"checkpoint {path} is a folder; name a file in it (last.pt or best.pt)") from None
    except PermissionError:
        raise ConfigError(f"checkpoint {path} cannot be read: permission denied") from None
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        if refused:
            raise ConfigError(f"checkpoint {path} holds a pickled object ({refused.group(1)}) that could run code "
                              "when loaded; refused (checkpoints hold only tensors and plain values)") from None
        raise ConfigError(f"checkpoint {path} is not a checkpoint written by train.py") from None
    except Exception:  # truncated or foreign files fail deep inside torch's zip reader with cryptic messages
        size = path.stat().st_size if path.is_file() else 0
        raise ConfigError(f"checkpoint {path} is truncated or not a PyTorch checkpoint ({size} bytes); "
                          "it cannot be loaded") from None
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise ConfigError(f"checkpoint {path} is not a checkpoint written by train.py (no {', '.join(missing)})")
    return state


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
    """The newest `last.pt` of `run_name` whose config fingerprint matches and that has steps left.

    A `last.pt` that cannot be read is reported (ConfigError), not skipped: skipping it would silently
    start over or resume an older state."""
    runs = sorted((Path(output_dir) / run_name).glob("*/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in runs:
        try:
            state = load_checkpoint(path, CHECKPOINT_KEYS)
        except ConfigError as error:
            raise ConfigError(f"resume=auto: {error}; move it out of {path.parent.parent} to resume an older "
                              "checkpoint, or pass resume=null to start afresh") from None
        if state["fingerprint"] == fingerprint and state["step"] < planned_steps:
            return path
    return None
