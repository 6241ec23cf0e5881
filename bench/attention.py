"""`make bench`: forward+backward time and peak memory of every attention mechanism as n grows (SPEC §7).

    make bench                                                  # everything registered, n = 256 ... 16,384
    make bench BENCH_ARGS="--attentions softmax,luna --lengths 1024,4096"
    python -m bench.attention [--attentions softmax,esp,esp:cost=sqeuclidean,esp_direct]
        [--lengths 256,512,...,16384] [--batch 1] [--heads 4] [--head-dim 32] [--repeats 5] [--min-seconds 1]
        [--budget-seconds 60] [--threads <cores>] [--out reports/bench]

Each (mechanism, n) is measured in a fresh subprocess (`bench/worker.py`: warm-up, then the median of
the timed repeats; peak memory above the post-import, post-input baseline). `softmax` is always
measured too, at every n, so every number has a ratio to softmax taken in the same run. An entry
`name:option=value,...` benchmarks options; `esp_direct` is the direct reference ESP formulation
(`bench/esp_reference.py`, skipped with a note when that module is absent). The default set is every
registered mechanism, plus `esp:cost=sqeuclidean` when esp is registered, plus `esp_direct`.

A mechanism stops growing n ("skipped (budget)") after a measurement that took longer than the budget
or ran out of memory, or when extrapolating its last two lengths predicts the next one would exceed
the time budget or the memory limit. Writes `<out>/attention.json` (raw numbers, growth per doubling,
machine) and `<out>/attention.png` (log-log time and memory vs n) and prints the table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from attention import get_attention, list_attentions
from bench.report import finish_report, format_table, plot_report
from bench.worker import DIRECT_ESP, RESULT_MARKER, make_attention, parse_entry
from lab.registry import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LENGTHS = [256 * 2**i for i in range(7)]  # 256 ... 16,384
SKIPPED = "skipped (budget)"
MMAP_THRESHOLD = "65536"  # bytes; see bench/worker.py on peak-memory accounting


def default_entries() -> list[str]:
    names = list_attentions()
    return names + (["esp:cost=sqeuclidean"] if "esp" in names else []) + [DIRECT_ESP]


def resolve_entries(requested: list[str], heads: int, head_dim: int) -> tuple[list[str], list[str]]:
    """Validated entries (softmax first, always present, no duplicates) and notes on dropped ones."""
    entries, notes = [], []
    for entry in dict.fromkeys(["softmax", *[e.strip() for e in requested]]):
        try:
            make_attention(*parse_entry(entry), heads, head_dim)  # unknown names and bad options fail here
        except ImportError as error:
            notes.append(f"{entry}: skipped, bench.esp_reference is not importable ({error})")
            continue
        entries.append(entry)
    return entries, notes


def complexity_of(entry: str) -> str:
    name = parse_entry(entry)[0]
    return "quadratic" if name == DIRECT_ESP else get_attention(name).complexity


def machine_info(threads: int, device: str) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "threads": threads, "device": device,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None, "torch": torch.__version__,
            "python": platform.python_version(), "date": datetime.datetime.now().astimezone().isoformat(),
            "malloc_mmap_threshold_bytes": int(MMAP_THRESHOLD) if device == "cpu" else None,
            "load_average_1min_at_start": os.getloadavg()[0]}  # other processes on the machine skew timings


def memory_limit_bytes(device: str) -> int:
    """Default memory limit for the extrapolation check: half the available RAM, or the GPU's memory."""
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory
    available = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable"))
    return int(available.split()[1]) * 1024 // 2


def run_worker(entry: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh interpreter; failures come back as a status, never as an exception."""
    command = [sys.executable, "-m", "bench.worker", "--entry", entry, "--n", str(n), "--batch", str(args.batch),
               "--heads", str(args.heads), "--head-dim", str(args.head_dim), "--repeats", str(args.repeats),
               "--min-seconds", str(args.min_seconds),
               "--budget-seconds", str(args.budget_seconds), "--threads", str(args.threads), "--device", args.device]
    timeout = 3 * args.budget_seconds + 120  # a warm-up over budget ends the worker; this catches the rest
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": SKIPPED, "message": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if lines:
        return json.loads(lines[-1][len(RESULT_MARKER):])
    if done.returncode < 0:
        return {"status": "oom", "message": f"killed by signal {-done.returncode} (likely out of memory)"}
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "error", "message": f"exit code {done.returncode}: {last}"}


def extrapolate(points: list[tuple[int, float]], n: int) -> float:
    """Value at `n` continuing the growth exponent of the last two points (at least linear; quadratic
    assumed from a single point)."""
    (n1, v1), (n2, v2) = ([(0, 0.0)] + points)[-2:]
    exponent = math.log(v2 / v1) / math.log(n2 / n1) if n1 and v1 > 0 and v2 > 0 else 2.0
    return v2 * (n / n2) ** max(1.0, exponent)


def stop_reason(history: list[dict[str, Any]], n: int, budget_s: float, memory_limit: int) -> str | None:
    """Why `n` is not measured for a mechanism with these earlier records, or None to measure it."""
    if not history:
        return None
    last = history[-1]
    if last["status"] != "ok":
        return last["message"] if last["status"] == SKIPPED else f"{last['status']} at n={last['n']}"
    if last["over_budget"]:
        return f"n={last['n']} took {last['time_s']:.1f} s > budget {budget_s:g} s"
    measured = [r for r in history if r["status"] == "ok"]
    seconds = extrapolate([(r["n"], r["time_s"]) for r in measured], n)
    if seconds > budget_s:
        return f"predicted {seconds:.3g} s > budget {budget_s:g} s"
    peak = extrapolate([(r["n"], max(r["peak_bytes"], 1)) for r in measured], n)
    if peak > memory_limit:
        return f"predicted {peak / 2**30:.1f} GiB > limit {memory_limit / 2**30:.1f} GiB"
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every entry at every length (lengths outermost, so each softmax ratio is taken close in time)."""
    entries, notes = resolve_entries(args.attentions or default_entries(), args.heads, args.head_dim)
    for note in notes:
        print("note:", note, flush=True)
    memory_limit = args.max_memory_mb * 2**20 if args.max_memory_mb else memory_limit_bytes(args.device)
    history: dict[str, list[dict[str, Any]]] = {entry: [] for entry in entries}
    for n in args.lengths:
        for entry in entries:
            reason = stop_reason(history[entry], n, args.budget_seconds, memory_limit)
            record = {"status": SKIPPED, "message": reason} if reason else run_worker(entry, n, args)
            history[entry].append({"mechanism": entry, "n": n, **record})
            shown = (f"{record['time_s'] * 1e3:10.1f} ms {record['peak_bytes'] / 2**20:9.1f} MiB"
                     if record["status"] == "ok" else f"{record['status']}: {record['message']}")
            print(f"  {entry:<28} n={n:<6} {shown}", flush=True)
    settings = {key: getattr(args, key) for key in ("lengths", "batch", "heads", "head_dim", "repeats",
                                                    "min_seconds", "budget_seconds")}
    return finish_report({
        "machine": machine_info(args.threads, args.device), "settings": settings, "notes": notes,
        "mechanisms": {e: {"name": parse_entry(e)[0], "options": parse_entry(e)[1], "complexity": complexity_of(e)}
                       for e in entries},
        "results": [record for entry in entries for record in history[entry]],
    })


def _csv(kind):
    return lambda text: [kind(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attentions", type=_csv(str), default=None,
                        help="comma-separated entries, name or name:option=value,... (default: all registered "
                             "+ esp:cost=sqeuclidean + esp_direct); softmax is always added")
    parser.add_argument("--lengths", type=_csv(int), default=DEFAULT_LENGTHS, help="comma-separated sequence lengths")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up (median reported)")
    parser.add_argument("--min-seconds", type=float, default=1.0,
                        help="fast calls repeat beyond --repeats until their timed total reaches this (at most 200)")
    parser.add_argument("--budget-seconds", type=float, default=60.0,
                        help="a mechanism stops growing n once one forward+backward exceeds this")
    parser.add_argument("--max-memory-mb", type=float, default=None,
                        help="skip lengths predicted to need more (default: half the available RAM)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        report = run(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print()
    print(format_table(report))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_report(report, args.out / "attention.png")
    print(f"\nwrote {args.out / 'attention.json'} and {args.out / 'attention.png'}")
    return report


if __name__ == "__main__":
    main()
