"""`make eval`: test metrics for the tracked runs that lack them, then one report over the runs.

    make eval [TASK=cifar10] [SWEEP=<sweep id>] [EXPERIMENT=<preset>]
    python -m evaluation.report [--task T] [--sweep S] [--experiment E] [--out reports/eval]
                                [--data-root DIR] [--device auto]

Reads the training runs of the tracking store (`MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the project
root; a local file or a server), filtered by their tags. A run whose test metrics are missing gets them from its
best checkpoint when its training completed (evaluation/retest.py), logged back to that run. Then writes
`<out>/report.md`, `<out>/report.html` (self-contained: figures embedded) and `<out>/report.json`, and logs
them as artifacts of a run in the MLflow experiment `eval`. Runs that cannot be in the tables (interrupted,
diverged, checkpoint gone, unknown task, superseded by a newer run of the same configuration and seed) are
listed with the reason. An empty store: one line, exit 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lab.config import PROJECT_ROOT
from lab.registry import ConfigError
from lab.tracking import artifact_location, git_commit
from tasks import TASKS

from .document import Block, Heading, Paragraph, Table, to_html, to_markdown
from .papers import load_paper_numbers
from .retest import NotRetestable, retest
from .rows import RunRecord, group_rows, setting_key
from .store import client_for, find_runs, store_exists, store_uri
from .task_section import task_section

EVAL_EXPERIMENT = "eval"


def usable_runs(runs: list[RunRecord], client, data_root: str | None, device: str):
    """(runs for the tables, [(run, reason) left out], [(run, metrics) filled in now]). Per configuration and
    seed the newest run with complete test metrics is used; missing metrics are filled in on the way."""
    complete, left_out, filled = [], [], []
    used: dict[tuple, RunRecord] = {}
    for run in runs:  # newest first
        if run.tags["task"] not in TASKS.names():
            left_out.append((run, f"unknown task '{run.tags['task']}' (not registered in this version)"))
            continue
        key = (setting_key(run), run.seed)
        if key in used:
            left_out.append((run, f"superseded by the newer run {used[key].run_id[:8]} of the same configuration "
                                  "and seed"))
            continue
        missing = run.test_metrics_missing(list(TASKS.get(run.tags["task"]).reported_metrics()))
        if missing:
            print(f"{run.run_name} ({run.run_id[:8]}): no test {', '.join(missing)}; testing its best checkpoint",
                  flush=True)
            try:
                metrics = retest(run, client, data_root=data_root, device=device)
            except NotRetestable as reason:
                left_out.append((run, str(reason)))
                print(f"  not possible: {reason}", flush=True)
                continue
            run.metrics.update(metrics)
            filled.append((run, metrics))
        used[key] = run
        complete.append(run)
    return complete, left_out, filled


def build(runs, left_out, filled, client, folder: Path, header: list[str]) -> tuple[list[Block], dict]:
    numbers = load_paper_numbers()
    blocks: list[Block] = [Heading(1, "OT-Attention Lab: evaluation report"), Paragraph(" · ".join(header))]
    data = {"header": header, "rows": [], "filled_in": [], "left_out": []}
    rows = group_rows(runs)
    for task in sorted({row.task for row in rows}):
        task_cls = TASKS.get(task)
        section = task_section(task, [row for row in rows if row.task == task], task_cls.reported_metrics(),
                               task_cls.monitor, numbers, client, folder)
        blocks.extend(section.blocks)
        data["rows"].extend(section.rows)
    if filled:
        blocks.append(Heading(2, "Test metrics filled in by this evaluation"))
        blocks.append(Table(["run", "run id", "metrics logged back"],
                            [[run.run_name, run.run_id, ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.items()))]
                             for run, m in filled]))
        data["filled_in"] = [{"run_id": run.run_id, "metrics": m} for run, m in filled]
    if left_out:
        blocks.append(Heading(2, "Runs not in the tables"))
        blocks.append(Table(["run", "run id", "status", "why"],
                            [[run.run_name, run.run_id, run.status, reason] for run, reason in left_out]))
        data["left_out"] = [{"run_id": run.run_id, "run_name": run.run_name, "reason": reason}
                            for run, reason in left_out]
    covered = {n.task for n in numbers} & {row.task for row in rows}
    if not covered:
        blocks.append(Paragraph("No paper numbers for the tasks here: evaluation/paper_numbers.yaml holds "
                                + ", ".join(sorted({n.task for n in numbers})) + " (SPEC §9)."))
    return blocks, data


def log_eval_run(client, uri: str, folder: Path, filters: dict[str, str]) -> str:
    experiment = client.get_experiment_by_name(EVAL_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        EVAL_EXPERIMENT, artifact_location=artifact_location(uri, EVAL_EXPERIMENT))
    name = "-".join(["eval", *filters.values()])
    run = client.create_run(experiment_id, run_name=name, tags={"kind": "eval", "git_commit": git_commit(),
                                                               **{f"filter.{k}": v for k, v in filters.items()}})
    for file in ("report.md", "report.html", "report.json"):
        client.log_artifact(run.info.run_id, str(folder / file))
    client.log_artifacts(run.info.run_id, str(folder / "figures"), "figures")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # figures are fetched one by one
    parser = argparse.ArgumentParser(prog="python -m evaluation.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", help="only this task's runs")
    parser.add_argument("--sweep", help="only the runs of this sweep id")
    parser.add_argument("--experiment", help="only the runs of this experiment preset")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "reports" / "eval"), help="report folder")
    parser.add_argument("--data-root", help="dataset root for re-testing checkpoints (default: each run's data.root)")
    parser.add_argument("--device", default="auto", help="device for re-testing checkpoints")
    args = parser.parse_args(argv)
    try:
        task = TASKS.canonical(args.task) if args.task else None
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    filters = {key: value for key, value in (("task", task), ("sweep", args.sweep), ("experiment", args.experiment))
               if value}
    uri = store_uri()
    described = " ".join(f"{k}={v}" for k, v in filters.items()) or "any"
    if not store_exists(uri):
        print(f"no tracked runs: the store {uri} does not exist yet (train something first)")
        return 0
    client = client_for(uri)
    runs = [RunRecord.from_mlflow(run) for run in find_runs(client, filters)]
    runs = [run for run in runs if "task" in run.tags]  # training runs (the eval runs have no task tag)
    if not runs:
        print(f"no tracked runs matching {described} in {uri}")
        return 0
    complete, left_out, filled = usable_runs(runs, client, args.data_root, args.device)
    folder = Path(args.out)
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    for stale in (folder / "figures").glob("*.png"):  # a report holds only its own figures
        stale.unlink()
    header = [f"generated {time.strftime('%Y-%m-%d %H:%M')}", f"store `{uri}`", f"runs: {described}",
              f"{len(complete)} runs in the tables, {len(filled)} tested now, {len(left_out)} left out",
              f"commit {git_commit()[:10]}"]
    blocks, data = build(complete, left_out, filled, client, folder, header)
    (folder / "report.md").write_text(to_markdown(blocks, folder))
    (folder / "report.html").write_text(to_html(blocks, "OT-Attention Lab: evaluation report"))
    (folder / "report.json").write_text(json.dumps(data, indent=1, default=str))
    run_id = log_eval_run(client, uri, folder, filters)
    print(f"wrote {folder / 'report.md'} and {folder / 'report.html'}: {len(data['rows'])} rows from "
          f"{len(complete)} runs ({len(filled)} tested now, {len(left_out)} left out); logged to MLflow run {run_id} "
          f"(experiment '{EVAL_EXPERIMENT}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
