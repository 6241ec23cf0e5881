"""`make sweep`: train a grid of runs (attentions x poolings x seeds) one after another under one sweep id.

    make sweep TASK=cifar10 ATTNS="softmax lotformer" SEEDS="0 1" ARGS="trainer.epochs=5"
    make sweep TASK=protein ATTNS="lotformer" POOLS="mean swe cswe" SEEDS="0 1 2"
    python -m evaluation.sweep --attentions "softmax esp" [--poolings "mean cswe"] [--seeds "0 1 2"]
                               [--id NAME] task=cifar10 [experiment=NAME] [any train.py key=value ...]

Every run is an ordinary `train.py` run (in this process, one after another, as Hydra's basic launcher
does), tracked as usual and tagged `sweep=<id>`. The id is `<task>-<hash of the shared arguments>`, so
running the same command again, or the same one with more attentions or seeds, is the same sweep: a run
that already finished in it is skipped, an interrupted one resumes from its checkpoint (resume=auto), the
others start. Every configuration is checked before the first run starts (a bad name: one line, exit 2,
nothing run). A failed run is reported and the sweep goes on; Ctrl-C or SIGTERM stops the current run
with a checkpoint (as in train.py) and ends the sweep. A summary table closes it. Exit code: 0 when every
run has finished, 1 when one failed, 128 + signal when interrupted.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import train
from lab.download import DataError
from lab.registry import ConfigError
from tasks import TASKS

from .store import client_for, find_runs, store_exists, store_uri


class SweepInterrupted(KeyboardInterrupt):
    """SIGTERM outside a training step (between runs, or a second signal during one)."""


@dataclass
class Cell:
    """One run of the grid: its train.py arguments and what identifies it in the store."""
    args: list[str]
    run_name: str
    fingerprint: str
    experiment: str  # the MLflow experiment the run is tracked in
    uri: str
    monitor: str  # test metric shown in the summary
    status: str = "not started"
    metric: float | None = None
    seconds: float | None = None
    run_id: str = ""


def sweep_id(base_args: list[str], task: str) -> str:
    """`<task>-<8 hex>` from the arguments shared by every run (not the grid axes, so a grown grid keeps it)."""
    digest = hashlib.sha256(json.dumps(sorted(base_args)).encode()).hexdigest()[:8]
    return f"{task}-{digest}"


def plan(base_args: list[str], attentions: list[str], poolings: list[str], seeds: list[int],
         identifier: str | None) -> tuple[str, list[Cell]]:
    """The sweep id and its cells, seeds outermost (a full comparison at one seed comes first); every
    configuration validated (ConfigError/DataError propagate before anything runs)."""
    grid = [[*base_args, f"attention={attention}", *([f"pooling={pooling}"] if pooling else []), f"seed={seed}"]
            for seed in seeds for attention in attentions for pooling in poolings or [None]]
    identifier = identifier or sweep_id(base_args, train.load_config(grid[0]).task.name)
    cells = []
    for args in grid:
        args = [*args, f"tracking.sweep={identifier}"]
        cfg = train.load_config(args)
        cells.append(Cell(args, cfg.run_name, train.fingerprint(cfg), cfg.tracking.experiment or cfg.task.name,
                          store_uri(cfg.tracking.uri), f"test/{TASKS.get(cfg.task.name).monitor}"))
    names = [cell.run_name for cell in cells]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"the grid repeats runs: {', '.join(duplicates)}")
    return identifier, cells


def runs_of(cell: Cell, identifier: str) -> list:
    """This cell's runs in the store (same config fingerprint, same sweep), newest first."""
    if not store_exists(cell.uri):
        return []
    return find_runs(client_for(cell.uri), {"fingerprint": cell.fingerprint, "sweep": identifier},
                     [cell.experiment])


def record(cell: Cell, identifier: str, started: float | None) -> None:
    """Fill the cell's run id and test metric from the store; `started`: when this pass launched it."""
    runs = runs_of(cell, identifier)
    if not runs:
        return
    run = runs[0]
    cell.run_id, cell.metric = run.info.run_id, run.data.metrics.get(cell.monitor)
    if started is not None and run.info.status == "FINISHED" and run.info.start_time < started * 1000:
        cell.status = "resumed, finished"


def run_sweep(identifier: str, cells: list[Cell], launch: Callable[[list[str]], int] = train.main) -> int:
    """Run the cells in order (skipping finished ones); print the summary; return the exit code."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    interrupted = None
    try:
        for index, cell in enumerate(cells, 1):
            if any(run.info.status == "FINISHED" for run in runs_of(cell, identifier)):
                cell.status = "skipped (finished)"
                record(cell, identifier, None)
                continue
            print(f"== sweep {identifier} [{index}/{len(cells)}] {cell.run_name}", flush=True)
            started = time.time()
            try:
                code = launch(cell.args)
            except Exception:  # a bug in this run: show it, go on with the others
                traceback.print_exc()
                code = 1
            cell.seconds = time.time() - started
            if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
                cell.status, interrupted = "interrupted (resumable)", code
            else:
                cell.status = "finished" if code == 0 else f"failed (exit {code})"
            record(cell, identifier, started)
            if interrupted:
                break
    except KeyboardInterrupt as stop:  # SIGINT or SIGTERM between runs, or a second one during a run
        interrupted = 128 + (signal.SIGTERM if isinstance(stop, SweepInterrupted) else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary(identifier, cells), flush=True)
    if interrupted:
        return interrupted
    return 1 if any(cell.status.startswith("failed") for cell in cells) else 0


def _raise_interrupt(signum, frame):
    raise SweepInterrupted()


def summary(identifier: str, cells: list[Cell]) -> str:
    rows = [("run", "status", "test metric", "time", "MLflow run")]
    for cell in cells:
        metric = "-" if cell.metric is None else f"{cell.monitor} {cell.metric:.4f}"
        seconds = "-" if cell.seconds is None else f"{cell.seconds:.0f} s"
        rows.append((cell.run_name, cell.status, metric, seconds, cell.run_id or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in rows]
    done = sum(cell.status in ("finished", "resumed, finished", "skipped (finished)") for cell in cells)
    return "\n".join([f"sweep {identifier}: {done}/{len(cells)} runs finished "
                      f"(make eval SWEEP={identifier} reports them)", *lines])


def words(text: str) -> list[str]:
    return text.replace(",", " ").split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attentions", default="softmax", help='space-separated attention names ("softmax esp")')
    parser.add_argument("--poolings", default="", help="space-separated pooling names (default: the task's)")
    parser.add_argument("--seeds", default="0", help='space-separated seeds ("0 1 2")')
    parser.add_argument("--id", default=None, help="sweep id (default: <task>-<hash of the shared arguments>)")
    parser.add_argument("overrides", nargs="*", help="train.py arguments shared by every run (task=..., key=value)")
    args = parser.parse_args(argv)
    try:
        seeds = [int(seed) for seed in words(args.seeds)]
    except ValueError:
        print(f"error: seeds must be integers, got '{args.seeds}'", file=sys.stderr)
        return 2
    if not seeds or not words(args.attentions):
        print("error: a sweep needs at least one attention (ATTNS=...) and one seed (SEEDS=...)", file=sys.stderr)
        return 2
    try:
        identifier, cells = plan(args.overrides, words(args.attentions), words(args.poolings), seeds, args.id)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"sweep {identifier}: {len(cells)} runs", flush=True)
    return run_sweep(identifier, cells)


if __name__ == "__main__":
    sys.exit(main())
