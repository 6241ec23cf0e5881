"""`make parity`: how each attention mechanism learns against softmax, at one fixed budget per task (issue 16).

    make parity                                        # the default budget below: 3 seeds, 2 runs at once
    make parity PARITY_ARGS="--tasks cifar10 --seeds 0"
    python -m bench.parity [--tasks cifar10,modelnet40,protein] [--attentions softmax,lotformer,...]
                           [--seeds 0,1,2] [--jobs 2] [--data-root ./data/parity] [--out reports/parity]

Per task, rows: every registered mechanism, the paper presets whose setting fits the task's backbone
(`configs/experiment/`, e.g. `lotformer_deit`: LOTFormer with its DeiT extras), and a floor, the same model
with no attention block (depth 0). Every row trains the same budget (`BUDGETS`) for each seed, as ordinary
tracked `train.py` runs through the sweep runner (`evaluation.sweep`: one sweep per task, id
`parity-<task>-<hash of the budget>`; the same command again skips finished runs and resumes an interrupted
one), each on one thread, `--jobs` of them at once (`bench/shards.py`: one process per share of the runs;
default 2, or 1 on a one-core machine). Each run gets the tag `parity` = its row. Then the report
(`bench/parity_report.py`): test accuracy mean ± std over seeds, the difference to softmax, seconds per epoch,
in `<out>/parity.{md,json,png}`. The synthetic stand-ins are written under `--data-root` (never into the
folder where the real datasets live); SCL2205 is real and ships in the `p-scldata` wheel.

Exit code: 0 when every run finished, 1 when one failed (the report still covers the others), 2 for bad
arguments, 128 + signal when interrupted.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attention.registry import ATTENTIONS
from evaluation.store import client_for
from evaluation.sweep import Cell, plan, run_sweep, words
from lab.config import PROJECT_ROOT, experiment_names, group_file, load_yaml
from lab.download import DataError
from lab.registry import ConfigError
from tasks import TASKS

from .shards import parse_shard, run_shards, take

NO_ATTENTION = "no attention block"
QUIET = ("tracking.system_metrics=false", "tracking.diagnostics_every=0", "resume=auto")


@dataclass(frozen=True)
class Budget:
    """One task's fixed training budget: the overrides every row shares, and what the rows may add."""
    data: str  # "synthetic stand-in" or "real"
    args: tuple[str, ...]  # train.py overrides shared by every row
    describe: str  # the budget in words, for the report
    no_attention: tuple[str, ...] = ("model.depth=0",)  # the floor row's own overrides
    presets: tuple[str, ...] = ()  # configs/experiment presets trained as rows of their own
    left_out: dict[str, str] = field(default_factory=dict)  # mechanism -> why it is not trained at this budget


BUDGETS = {
    "cifar10": Budget(
        "synthetic stand-in (glyphs, 1,800 train / 200 val / 500 test)",
        ("task=cifar10", "model.dim=64", "model.depth=2", "model.num_heads=4", "trainer.batch_size=32",
         "trainer.lr=2e-3", "trainer.epochs=9"),
        "ViT of width 64, depth 2, 4 heads (patch 4: 64 patches + CLS), batch 32, AdamW lr 2e-3 with the task's "
        "cosine schedule and augmentation, 9 epochs = 513 steps",
        no_attention=("model.depth=0", "pooling=mean"), presets=("lotformer_deit",)),
    "modelnet40": Budget(
        "synthetic stand-in (8 primitives with pose, clutter and holes; 176 train / 16 val / 64 test meshes)",
        ("task=modelnet40", "task.num_points=128", "model.dim=32", "model.depth=1", "model.num_heads=2",
         "model.neighbours=8", "model.num_tokens=32", "model.head_hidden=32", "model.head_dropout=0.0",
         "trainer.batch_size=16", "trainer.lr=3e-3", "trainer.epochs=25"),
        "point transformer of width 32, one block of 2 heads over 32 neighbourhood tokens of 128 points, batch 16, "
        "AdamW lr 3e-3, 25 epochs = 275 steps"),
    "protein": Budget(
        "real (SCL2205: a seeded 4,000 of the 15,183 training sequences, the full 1,260 val / 2,631 test)",
        ("task=protein", "pooling=mean", "task.train_subset=4000", "trainer.epochs=2"),
        "the task's sequence encoder (one block of width 64, 4 heads, 256 residues: first 192 + last 64), mean "
        "pooling, batch 32, AdamW lr 2e-3, 2 epochs = 250 steps",
        left_out={"esp": "~4 s per step at 256 residues on one thread (40x softmax): ~17 min a run at this budget; "
                         "`--tasks protein --attentions esp` trains it"}),
}


@dataclass
class Row:
    """One row of a task's table: its label, its attention and the train.py overrides that make it."""
    label: str
    attention: str
    args: list[str] = field(default_factory=list)


def budget_id(task: str, budget: Budget, data_root: Path) -> str:
    digest = hashlib.sha256(json.dumps([*budget.args, str(data_root.resolve())]).encode()).hexdigest()[:8]
    return f"parity-{task}-{digest}"


def rows_for(budget: Budget, attentions: list[str]) -> list[Row]:
    """Softmax, the other mechanisms (minus the ones left out), the presets of those mechanisms, then the floor."""
    ordered = sorted(attentions, key=lambda name: name != "softmax")
    rows = [Row(name, name) for name in ordered if name not in budget.left_out]
    presets = [Row(preset, preset_attention(preset), [f"experiment={preset}"]) for preset in budget.presets]
    rows += [row for row in presets if row.attention in attentions]
    return [*rows, Row(NO_ATTENTION, "softmax", list(budget.no_attention))]


def preset_attention(preset: str) -> str:
    """The mechanism a preset chooses (`groups: attention:` in its file)."""
    if preset not in experiment_names():
        raise ConfigError(f"unknown experiment '{preset}'; valid choices: {', '.join(experiment_names())}")
    return (load_yaml(group_file("experiment", preset)).get("groups") or {}).get("attention", "softmax")


def prepare_data(task: str, budget: Budget, data_root: Path) -> None:
    """Write the task's synthetic stand-in under data_root (once); real data needs nothing here."""
    task_cls = TASKS.get(task)
    if budget.data.startswith("synthetic"):
        task_cls.prepare(data_root, synthetic=True, download=False)


def plan_task(task: str, budget: Budget, attentions: list[str], seeds: list[int],
              data_root: Path) -> tuple[str, list[tuple[Cell, str]]]:
    """The task's sweep id and its cells with their row labels, seeds outermost (a whole comparison at the first
    seed comes first). Every configuration is validated here, before anything runs."""
    identifier = budget_id(task, budget, data_root)
    base = [*budget.args, *QUIET, f"data.root={data_root}"]
    planned = []
    for order, row in enumerate(rows_for(budget, attentions)):
        for seed in seeds:
            named = [f"run_name={task}-no_attention-s{seed}"] if row.label == NO_ATTENTION else []
            _, [cell] = plan([*base, *row.args, *named], [row.attention], [], [seed], identifier)
            planned.append((seed, order, cell, row.label))
    planned.sort(key=lambda item: (seeds.index(item[0]), item[1]))
    return identifier, [(cell, label) for _, _, cell, label in planned]


def tag_rows(cells: list[tuple[Cell, str]]) -> None:
    """Tag every run the sweep recorded with `parity=<row>` (for the UI and `make eval`)."""
    for cell, label in cells:
        if cell.run_id:
            client_for(cell.uri).set_tag(cell.run_id, "parity", label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(BUDGETS), help=f"comma-separated, of: {', '.join(BUDGETS)}")
    parser.add_argument("--attentions", default=",".join(ATTENTIONS.names()), help="mechanisms (default: all)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data-root", default=str(PROJECT_ROOT / "data" / "parity"),
                        help="where the synthetic stand-ins are written")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "reports" / "parity"))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs trained at once, each in its own process on one thread (default: 2)")
    parser.add_argument("--shard", help=argparse.SUPPRESS)  # i/N: this process trains only its share (internal)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        tasks = [TASKS.canonical(name) for name in words(args.tasks)]
        unknown = [name for name in tasks if name not in BUDGETS]
        if unknown:
            raise ConfigError(f"no parity budget for {', '.join(unknown)}; tasks with one: {', '.join(BUDGETS)}")
        attentions = [ATTENTIONS.canonical(name) for name in words(args.attentions)]
        if "softmax" not in attentions:
            attentions.insert(0, "softmax")  # every difference is taken to softmax
        if not all(seed.lstrip("-").isdigit() for seed in words(args.seeds)) or not words(args.seeds):
            raise ConfigError(f"--seeds takes integers, got '{args.seeds}'")
        seeds = [int(seed) for seed in words(args.seeds)]
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
        shard = parse_shard(args.shard) if args.shard else None
        data_root = Path(args.data_root)
        sweeps = {}
        for task in tasks:
            if shard is None:  # the shards read what the parent wrote
                prepare_data(task, BUDGETS[task], data_root)
            sweeps[task] = plan_task(task, BUDGETS[task], attentions, seeds, data_root)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from .parity_report import write_report

    reports = {task: (identifier, BUDGETS[task]) for task, (identifier, _) in sweeps.items()}
    if shard is None and args.jobs > 1:
        own = sys.argv[1:] if argv is None else argv
        code = run_shards([[sys.executable, "-m", "bench.parity", *own, "--shard", f"{index}/{args.jobs}"]
                           for index in range(args.jobs)])
        write_report(reports, Path(args.out))
        return code
    code = 0
    for task, (identifier, cells) in sweeps.items():
        if shard is not None:
            cells = take(cells, shard)
        print(f"== parity {task}: {len(cells)} runs ({BUDGETS[task].describe})", flush=True)
        code = run_sweep(identifier, [cell for cell, _ in cells]) or code
        tag_rows(cells)
        if code > 1:  # interrupted: report what there is, then stop
            break
    if shard is None:
        write_report(reports, Path(args.out))
    return code


if __name__ == "__main__":
    sys.exit(main())
