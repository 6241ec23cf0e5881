"""One task's part of the report: the results table (mean ± std over seeds, n, parameters, throughput, wall
time, run ids; the papers' numbers in their own columns where the setting matches), the papers' gains, a bar
chart, validation learning curves, and the last attention diagnostics of each row."""
from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .document import Block, Gallery, Heading, Image, Paragraph, Table
from .figures import bar_chart, learning_curves
from .papers import PaperNumber, gains, numbers_beside
from .rows import IDENTITY, Row, mean_std
from .store import UNSET

DIAGNOSTICS = ("attention/row_sum_max_dev", "attention/col_sum_max_dev", "attention/row_entropy")
DIAGNOSTIC_FIGURES = ("attention_maps", "slice_diagnostics")


@dataclass
class TaskReport:
    blocks: list[Block] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # for report.json


def format_value(mean: float, std: float | None) -> str:
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def format_seconds(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else (f"{minutes} min {rest} s" if minutes else f"{rest} s")


def row_titles(rows: list[Row]) -> list[str]:
    """Short labels: the identity parts that vary between the rows (attention always), then the setting label."""
    varying = [key for key in IDENTITY[1:] if len({getattr(row, key) for row in rows}) > 1 or key == "attention"]
    return ["/".join([*(getattr(row, key) for key in varying), *(f"{k}={v}" for k, v in row.label.items())])
            for row in rows]


def history(client, run_id: str, metric: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, metric)]


def throughput(client, row: Row) -> float | None:
    """Mean over the row's runs of each run's mean logged training samples/s."""
    per_run = [statistics.fmean(v for _, v in h) for run in row.runs
               if (h := history(client, run.run_id, "train/samples_per_s"))]
    return statistics.fmean(per_run) if per_run else None


def wall_seconds(row: Row) -> tuple[float, bool]:
    """Mean training wall time of the row's runs; False when it had to come from start/end times (resumes
    then count their downtime)."""
    logged = [run.metrics["train/wall_seconds"] for run in row.runs if "train/wall_seconds" in run.metrics]
    if len(logged) == len(row.runs):
        return statistics.fmean(logged), True
    spans = [((run.end_time or run.start_time) - run.start_time) / 1000 for run in row.runs]
    return statistics.fmean(spans), False


def parameters(row: Row) -> str:
    counts = sorted({int(run.params["model.num_parameters"]) for run in row.runs
                     if "model.num_parameters" in run.params})
    return " / ".join(f"{count:,}" for count in counts) or "-"


def task_section(task: str, rows: list[Row], metrics: tuple[str, ...], monitor: str, numbers: list[PaperNumber],
                 client, folder: Path) -> TaskReport:
    report = TaskReport()
    blocks = report.blocks
    titles = row_titles(rows)
    blocks.append(Heading(2, f"{task}"))
    blocks.append(Paragraph(f"Test metrics of each run's best validation checkpoint (selected by `val/{monitor}`), "
                            "mean ± sample standard deviation over seeds; n = number of seeds. Run ids: first 8 "
                            "characters (report.json has them in full)."))

    beside = [numbers_beside(row, numbers) for row in rows]
    published = [n for n in numbers if n.task == task]
    references = list(dict.fromkeys(n.source for n in published))  # [1], [2] ... in file order
    sources = [source for source in references  # a column per source that has a preset for this task
               if any(n.source == source and n.kind == "absolute" and n.experiment for n in published)]
    header = ["attention", "pooling", "model", "preset", *(["setting"] if any(r.label for r in rows) else []),
              *metrics, *(f"paper {metrics[0]} [{references.index(source) + 1}]" for source in sources),
              "n", "parameters", "samples/s", "train time", "runs"]
    table_rows, notes = [], []
    for index, (row, title, (found, why)) in enumerate(zip(rows, titles, beside)):
        stats = {metric: mean_std(row.values(f"test/{metric}")) for metric in metrics}
        speed = throughput(client, row)
        wall, measured = wall_seconds(row)
        papers = {n.source: n.value for n in found if n.metric == metrics[0]}
        if why:
            notes.append(f"{title}: no paper number beside it ({why}).")
        table_rows.append([
            row.attention, row.pooling, row.model, "-" if row.experiment == UNSET else row.experiment,
            *([", ".join(f"{k}={v}" for k, v in row.label.items())] if any(r.label for r in rows) else []),
            *(format_value(*stats[metric]) if row.values(f"test/{metric}") else "-" for metric in metrics),
            *(f"{papers[source]:.4f}" if source in papers else "" for source in sources),
            str(len(row.runs)), parameters(row), "-" if speed is None else f"{speed:,.0f}",
            format_seconds(wall) + ("" if measured else " (start to end)"),
            ", ".join(f"s{run.seed} {run.run_id[:8]}" for run in row.runs)])
        report.rows.append({
            "task": task, **dict(zip(IDENTITY[1:], row.identity[1:])), "setting": row.label,
            "metrics": {metric: {"mean": stats[metric][0], "std": stats[metric][1],
                                 "values": row.values(f"test/{metric}")} for metric in metrics},
            "n": len(row.runs), "seeds": [run.seed for run in row.runs], "run_ids": [run.run_id for run in row.runs],
            "samples_per_s": speed, "wall_seconds": wall, "paper": papers})
    blocks.append(Table(header, table_rows))
    blocks.extend(Paragraph(note) for note in notes)
    if published:
        blocks.extend(paper_blocks(task, published, references, gains(rows, numbers)))
    blocks.extend(plots(task, rows, titles, metrics[0], monitor, beside, client, folder))
    blocks.extend(diagnostics(task, rows, titles, client, folder))
    return report


def paper_blocks(task: str, published: list[PaperNumber], references: list[str], task_gains) -> list[Block]:
    """The papers' numbers for this task, each with its source and the preset of its setting, then caveats."""
    blocks: list[Block] = [Heading(3, f"{task}: the papers' numbers"), Paragraph(
        "On our metrics' scale (accuracies as fractions: the paper's percent / 100; BLEU as printed). A paper "
        "number appears in the table above only beside a row whose runs used the preset of the paper's setting "
        "unchanged; task defaults and CPU presets never do.")]
    rows = [[f"[{references.index(n.source) + 1}]", n.model, n.attention or "(not in this lab)", f"test/{n.metric}",
             f"{n.value:.4f}", f"`{n.experiment}`" if n.experiment else "(no preset of ours)"]
            for n in published if n.kind == "absolute"]
    if rows:
        blocks.append(Table(["source", "paper's model", "our attention", "metric", "value", "preset"], rows))
    for gain in task_gains:
        number = gain.number
        ours = "n/a" if gain.ours is None else f"{gain.ours:+.4f}"
        blocks.append(Paragraph(f"[{references.index(number.source) + 1}] gain of {number.attention} over the best "
                                f"of {', '.join(number.baselines)} on `test/{number.metric}`, preset "
                                f"`{number.experiment}`: paper {number.value:+.4f}, ours {ours} ({gain.detail})."))
    for index, source in enumerate(references, 1):
        caveat = next(n.caveat for n in published if n.source == source)
        blocks.append(Paragraph(f"[{index}] {source}." + (f" {caveat}" if caveat else "")))
    return blocks


def plots(task, rows, titles, metric, monitor, beside, client, folder: Path) -> list[Block]:
    figures = folder / "figures"
    stats = [mean_std(row.values(f"test/{metric}")) for row in rows]
    papers = [next((n.value for n in found if n.metric == metric), None) for found, _ in beside]
    bar = bar_chart(f"{task}: test/{metric} (mean ± std over seeds)", f"test/{metric}", titles,
                    [m for m, _ in stats], [s for _, s in stats], [len(row.runs) for row in rows], papers)
    curves = learning_curves(f"{task}: val/{monitor} during training (mean over seeds, range shaded)",
                             f"val/{monitor}", {title: [history(client, run.run_id, f"val/{monitor}")
                                                       for run in row.runs] for row, title in zip(rows, titles)})
    paths = [figures / f"{task}_test_{metric}.png", figures / f"{task}_val_{monitor}.png"]
    for figure, path in zip((bar, curves), paths):
        save(figure, path)
    return [Image(paths[0], f"{task}: test/{metric} per row, mean ± std over seeds (diamonds: papers' numbers "
                            "where the setting matches)"),
            Image(paths[1], f"{task}: validation {monitor} against optimizer steps")]


def diagnostics(task, rows, titles, client, folder: Path) -> list[Block]:
    """The last attention statistics of each row (mean over seeds) and its first run's diagnostic figures."""
    have = [row for row in rows if any(key in run.metrics for run in row.runs for key in DIAGNOSTICS)]
    if not have:
        return []
    blocks: list[Block] = [Heading(3, f"{task}: attention diagnostics"), Paragraph(
        "Last validation probe (the first validation examples): largest deviation of row and column sums from 1 "
        "over valid tokens (both near 0 for a doubly-stochastic mechanism, rows only for softmax), mean row "
        "entropy in nats (log n = uniform). Figures: each row's first seed, on the first test examples of its "
        "best checkpoint.")]
    table = []
    for row, title in zip(rows, titles):
        cells = []
        for key in DIAGNOSTICS:
            values = [run.metrics[key] for run in row.runs if key in run.metrics]
            cells.append(f"{statistics.fmean(values):.4g}" if values else "-")
        table.append([title, *cells])
    blocks.append(Table(["row", "row-sum max dev", "col-sum max dev", "row entropy"], table))
    gallery = Gallery([])
    with tempfile.TemporaryDirectory() as scratch:
        for row, title in zip(rows, titles):
            run = row.runs[0]
            available = {a.path for a in client.list_artifacts(run.run_id, "figures")}
            for name in DIAGNOSTIC_FIGURES:
                artifact = f"figures/{name}_test.png"
                if artifact not in available:
                    continue
                local = Path(client.download_artifacts(run.run_id, artifact, scratch))
                target = folder / "figures" / f"{task}_{slug(title)}_{name}.png"
                target.write_bytes(local.read_bytes())
                gallery.images.append(Image(target, f"{title} (seed {run.seed}, run {run.run_id[:8]}): "
                                                    f"{name.replace('_', ' ')}"))
    return [*blocks, gallery] if gallery.images else blocks


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)

