"""The `make parity` report: per task, each row's test accuracy (mean ± sample std over seeds), its difference to
softmax and its seconds per epoch, from the runs the parity sweeps tracked; `parity.md`, `parity.json` and
`parity.png` (one bar panel per task, softmax's mean as a dashed line)."""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from attention.registry import ATTENTIONS
from evaluation.document import Heading, Paragraph, Table, to_markdown
from evaluation.figures import bar_chart, headless_pyplot
from evaluation.rows import RunRecord, mean_std
from evaluation.store import UNSET, client_for, find_runs, store_exists, store_uri
from lab.tracking import git_commit

from .parity import NO_ATTENTION, Budget, rows_for

METRIC = "test/accuracy"


def row_of(run: RunRecord) -> str:
    """The parity row a run belongs to: its preset, the floor (no attention block) or its mechanism."""
    if run.tags.get("experiment", UNSET) != UNSET:
        return run.tags["experiment"]
    if run.params.get("model.depth") == "0":
        return NO_ATTENTION
    return run.tags["attention"]


def finished_runs(client, identifier: str) -> dict[str, list[RunRecord]]:
    """row -> its finished runs with a test accuracy, the newest per seed, seeds ascending."""
    rows: dict[str, dict[str, RunRecord]] = {}
    for run in map(RunRecord.from_mlflow, find_runs(client, {"sweep": identifier})):  # newest first
        if run.status == "FINISHED" and METRIC in run.metrics:
            rows.setdefault(row_of(run), {}).setdefault(run.seed, run)
    return {row: [runs[seed] for seed in sorted(runs, key=lambda s: (len(s), s))] for row, runs in rows.items()}


def seconds_per_epoch(run: RunRecord) -> float | None:
    wall, epochs = run.metrics.get("train/wall_seconds"), run.metrics.get("train/epoch")
    return wall / epochs if wall and epochs else None


def task_rows(budget: Budget, runs: dict[str, list[RunRecord]]) -> list[dict]:
    """The task's rows in table order (mechanisms, presets, floor), each with its numbers."""
    order = [row.label for row in rows_for(budget, ATTENTIONS.names())]
    labels = sorted(runs, key=lambda label: order.index(label) if label in order else len(order))
    softmax = mean_std([run.metrics[METRIC] for run in runs.get("softmax", [])])[0]
    table = []
    for label in labels:
        values = [run.metrics[METRIC] for run in runs[label]]
        mean, std = mean_std(values)
        times = [t for run in runs[label] if (t := seconds_per_epoch(run)) is not None]
        table.append({"row": label, "attention": runs[label][0].tags["attention"], "values": values, "mean": mean,
                      "std": std, "n": len(values), "delta_softmax": None if math.isnan(softmax) else mean - softmax,
                      "seconds_per_epoch": statistics.fmean(times) if times else None,
                      "seeds": [run.seed for run in runs[label]], "run_ids": [run.run_id for run in runs[label]]})
    return table


def markdown_table(rows: list[dict]) -> Table:
    def cell(row):
        value = f"{row['mean']:.3f}" + ("" if row["std"] is None else f" ± {row['std']:.3f}")
        delta = "" if row["delta_softmax"] is None or row["row"] == "softmax" else f"{row['delta_softmax']:+.3f}"
        seconds = "-" if row["seconds_per_epoch"] is None else f"{row['seconds_per_epoch']:.1f}"
        return [row["row"], value, delta, str(row["n"]), seconds, ", ".join(r[:8] for r in row["run_ids"])]

    return Table(["row", "test accuracy", "Δ softmax", "n", "s / epoch", "runs"], [cell(row) for row in rows])


def plot(tables: dict[str, list[dict]], path: Path) -> None:
    plt = headless_pyplot()
    fig, axes = plt.subplots(len(tables), 1, figsize=(11, 3.2 * len(tables)), squeeze=False)
    for ax, (task, rows) in zip(axes[:, 0], tables.items()):
        bar_chart(f"{task}: {METRIC} (mean ± std over seeds)", METRIC, [row["row"] for row in rows],
                  [row["mean"] for row in rows], [row["std"] for row in rows], [row["n"] for row in rows],
                  [None] * len(rows), ax=ax)
        softmax = next((row["mean"] for row in rows if row["row"] == "softmax"), None)
        if softmax is not None:
            ax.axhline(softmax, color="black", linestyle="--", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(sweeps: dict[str, tuple[str, Budget]], out: Path) -> None:
    """Write `out/parity.{md,json,png}` for the parity sweeps `{task: (sweep id, budget)}`."""
    uri = store_uri()
    out.mkdir(parents=True, exist_ok=True)
    client = client_for(uri) if store_exists(uri) else None
    tables = {task: task_rows(budget, finished_runs(client, identifier)) if client else []
              for task, (identifier, budget) in sweeps.items()}
    header = f"generated {time.strftime('%Y-%m-%d %H:%M')} · store `{uri}` · commit {git_commit()[:10]}"
    blocks = [Heading(1, "Parity: every attention mechanism against softmax, one budget per task"), Paragraph(header),
              Paragraph("Test accuracy of each run's best validation checkpoint, mean ± sample std over seeds (n); "
                        "Δ softmax: the row's mean minus softmax's; s / epoch: training wall time per epoch on one "
                        "thread (shared machine: indicative). `no attention block`: the same model with depth 0.")]
    for task, (identifier, budget) in sweeps.items():
        blocks += [Heading(2, task), Paragraph(f"Data: {budget.data}. Budget: {budget.describe}. Sweep "
                                               f"`{identifier}` (`make eval SWEEP={identifier}`).")]
        blocks += [Paragraph(f"Not trained: `{name}`, {why}.") for name, why in budget.left_out.items()]
        blocks.append(markdown_table(tables[task]) if tables[task] else Paragraph("No finished runs yet."))
    (out / "parity.md").write_text(to_markdown(blocks, out))
    report = {"generated": header, "store": uri, "tasks": {
        task: {"sweep": identifier, "data": budget.data, "budget": budget.describe, "args": list(budget.args),
               "left_out": budget.left_out, "rows": tables[task]} for task, (identifier, budget) in sweeps.items()}}
    (out / "parity.json").write_text(json.dumps(report, indent=1))
    drawn = {task: rows for task, rows in tables.items() if rows}
    if drawn:
        plot(drawn, out / "parity.png")
    print(f"wrote {out / 'parity.md'}, parity.json and parity.png")
