"""The report's plots: test metric per row with error bars (and the papers' numbers as markers), and validation
learning curves per row (mean over seeds, the seeds' range shaded)."""
from __future__ import annotations

import math

import numpy as np


def headless_pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(title: str, metric: str, labels: list[str], means: list[float], stds: list[float | None],
              counts: list[int], papers: list[float | None], ax=None):
    """One bar per row: mean ± std over seeds (n under the label); a diamond for the paper's number. `ax`: draw
    into this panel of a larger figure instead of a figure of its own."""
    if ax is None:
        plt = headless_pyplot()
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 1.5), 3.4))
    fig = ax.figure
    x = np.arange(len(labels))
    errors = [0.0 if s is None else s for s in stds]
    ax.bar(x, means, yerr=errors, capsize=4, color="tab:blue", alpha=0.85, label="ours (mean ± std over seeds)")
    paper_x = [i for i, p in enumerate(papers) if p is not None]
    if paper_x:
        ax.scatter(paper_x, [papers[i] for i in paper_x], marker="D", color="black", zorder=3, label="paper")
    for i, mean in enumerate(means):
        if not math.isnan(mean):  # the value inside the bar's foot, clear of the error bar
            ax.annotate(f"{mean:.3f}", (i, 0), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7,
                        color="white")
    ax.set_xticks(x, [f"{label}\n(n={n})" for label, n in zip(labels, counts)], fontsize=7, rotation=0)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    if paper_x:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def learning_curves(title: str, metric: str, curves: dict[str, list[list[tuple[int, float]]]]):
    """curves: row label -> one (step, value) history per seed. Mean over the seeds at the steps all share."""
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    for label, histories in curves.items():
        histories = [dict(history) for history in histories if history]
        if not histories:
            continue
        steps = sorted(set.intersection(*(set(h) for h in histories)))
        values = np.array([[h[step] for step in steps] for h in histories])  # (seeds, steps)
        line, = ax.plot(steps, values.mean(0), marker="o", markersize=3, label=f"{label} (n={len(histories)})")
        if len(histories) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
