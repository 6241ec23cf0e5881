"""Run a benchmark's share of work in several processes at once (`make parity --jobs N`).

Each shard is the same command with `--shard i/N` added; it trains every N-th run of the plan (`take`), on
one thread, so N shards keep N cores busy. SIGINT and SIGTERM to the parent reach every shard, which stop
the way one run stops (a checkpoint, then exit); the same command again resumes them.
"""
from __future__ import annotations

import signal
import subprocess
from typing import Sequence, TypeVar

from lab.registry import ConfigError

Item = TypeVar("Item")


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/N"` -> (i, N) with 0 <= i < N, else ConfigError."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise ConfigError(f"--shard takes i/N with 0 <= i < N, got '{text}'")
    return int(index), int(count)


def take(items: Sequence[Item], shard: tuple[int, int]) -> list[Item]:
    """Shard i of N: items i, i + N, i + 2N, ... (so every shard gets its part of each seed early on)."""
    index, count = shard
    return list(items[index::count])


def run_shards(commands: list[list[str]]) -> int:
    """Start every command, forward SIGINT/SIGTERM to all of them, wait; the combined exit code: an
    interruption (> 1) first, then a failure (1), else 0."""
    # own sessions: a Ctrl-C at the terminal reaches only this process, which passes it on once (a second
    # SIGINT would make a run stop without writing its checkpoint)
    children = [subprocess.Popen(command, start_new_session=True) for command in commands]

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    codes = [128 - code if code < 0 else code for code in codes]  # killed by signal s: Popen says -s
    return max(codes) if any(code > 1 for code in codes) else int(any(codes))
