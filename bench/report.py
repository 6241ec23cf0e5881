"""Tables, growth factors and the log-log plot of `bench/attention.py` (see its docstring for commands).

A report is a dict: `machine`, `settings`, `notes`, `mechanisms` ({entry: name, options, complexity}),
`results` (one record per (mechanism, n): status, time_s, times_s, peak_bytes, ...). `finish_report`
adds the ratios to softmax at the same n, the growth per doubling between consecutive lengths, and
a summary per mechanism (the must-show of issue 3: growth per doubling from n = 4,096 on, and the time
ratio to softmax at n = 8,192).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

BASELINE = "softmax"
GROWTH_FROM = 4096  # the summary's growth-per-doubling window starts here
RATIO_AT = 8192  # the summary's time ratio to softmax is read here


def _ok(records: list[dict[str, Any]], mechanism: str) -> list[dict[str, Any]]:
    return [r for r in records if r["mechanism"] == mechanism and r["status"] == "ok"]


def finish_report(report: dict[str, Any]) -> dict[str, Any]:
    """Add `time_ms`, `peak_mib`, ratios to softmax, `growth` and `summary` to a raw report (in place)."""
    records = report["results"]
    baseline = {r["n"]: r for r in _ok(records, BASELINE)}
    for record in records:
        if record["status"] != "ok":
            continue
        record["time_ms"] = record["time_s"] * 1e3
        record["peak_mib"] = record["peak_bytes"] / 2**20
        softmax = baseline.get(record["n"])
        record["time_x_softmax"] = record["time_s"] / softmax["time_s"] if softmax else None
        record["memory_x_softmax"] = _ratio(record["peak_bytes"], softmax["peak_bytes"]) if softmax else None
    report["growth"] = {m: growth_per_doubling(_ok(records, m)) for m in report["mechanisms"]}
    report["summary"] = {m: summarize(report, m) for m in report["mechanisms"]}
    return report


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference > 0 else None


def growth_per_doubling(measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Time and memory factor per doubling of n between consecutive measured lengths."""
    steps = []
    for before, after in zip(measured, measured[1:]):
        doublings = math.log2(after["n"] / before["n"])
        factors = {key: _ratio(after[field], before[field]) for key, field in (("time", "time_s"),
                                                                              ("memory", "peak_bytes"))}
        steps.append({"from_n": before["n"], "to_n": after["n"],
                      **{key: f ** (1 / doublings) if f else None for key, f in factors.items()}})
    return steps


def summarize(report: dict[str, Any], mechanism: str) -> dict[str, Any]:
    measured = _ok(report["results"], mechanism)
    late = [step for step in report["growth"][mechanism] if step["from_n"] >= GROWTH_FROM]
    at_ratio_n = [r["time_x_softmax"] for r in measured if r["n"] == RATIO_AT]

    def worst(key: str) -> float | None:
        return max((step[key] for step in late if step[key] is not None), default=None)

    return {"largest_n": max((r["n"] for r in measured), default=None),
            f"max_time_growth_from_{GROWTH_FROM}": worst("time"),
            f"max_memory_growth_from_{GROWTH_FROM}": worst("memory"),
            f"time_x_softmax_at_{RATIO_AT}": at_ratio_n[0] if at_ratio_n else None}


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3g}"


def format_table(report: dict[str, Any]) -> str:
    """The mechanism x n table (×prev = growth per doubling from the previous length), then the summary."""
    machine, settings = report["machine"], report["settings"]
    width = max(len(m) for m in report["mechanisms"]) + 2
    lines = [f"attention forward+backward, batch {settings['batch']}, {settings['heads']} heads, head dim "
             f"{settings['head_dim']}, {machine['device']} ({machine['cpu']}), {machine['threads']} threads, "
             f"torch {machine['torch']}, load average {machine['load_average_1min_at_start']:.1f} at start",
             f"{'mechanism':<{width}}{'n':>7}{'time ms':>11}{'×softmax':>10}{'×prev':>7}"
             f"{'peak MiB':>11}{'×softmax':>10}{'×prev':>7}"]
    for mechanism in report["mechanisms"]:
        growth = {step["to_n"]: step for step in report["growth"][mechanism]}
        for r in (r for r in report["results"] if r["mechanism"] == mechanism):
            if r["status"] != "ok":
                lines.append(f"{mechanism:<{width}}{r['n']:>7}   {r['status']}: {r['message']}")
                continue
            step = growth.get(r["n"], {})
            lines.append(f"{mechanism:<{width}}{r['n']:>7}{_fmt(r['time_ms'], 1):>11}{_fmt(r['time_x_softmax']):>10}"
                         f"{_fmt(step.get('time')):>7}{_fmt(r['peak_mib'], 1):>11}"
                         f"{_fmt(r['memory_x_softmax']):>10}{_fmt(step.get('memory')):>7}")
    lines += ["", f"summary: worst growth per doubling for n >= {GROWTH_FROM} (time / memory), "
                  f"time ×softmax at n = {RATIO_AT}"]
    for mechanism, s in report["summary"].items():
        lines.append(f"  {mechanism:<{width}}{report['mechanisms'][mechanism]['complexity']:<12} largest n "
                     f"{s['largest_n'] or '-':>6}  growth {_fmt(s[f'max_time_growth_from_{GROWTH_FROM}'])} / "
                     f"{_fmt(s[f'max_memory_growth_from_{GROWTH_FROM}'])}  "
                     f"×softmax@{RATIO_AT} {_fmt(s[f'time_x_softmax_at_{RATIO_AT}'])}")
    lines += [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Log-log time and peak memory vs n, one line per mechanism, softmax in bold black, with O(n) and
    O(n²) reference slopes through softmax's largest measured point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    panels = [("time_ms", "forward+backward time (ms)"), ("peak_mib", "peak memory increase (MiB)")]
    for axis, (key, title) in zip(axes, panels):
        for mechanism in report["mechanisms"]:
            points = [(r["n"], r[key]) for r in _ok(report["results"], mechanism) if r[key] > 0]
            if not points:
                continue
            style = dict(color="black", linewidth=3, zorder=5) if mechanism == BASELINE else dict(linewidth=1.5)
            axis.plot(*zip(*points), marker="o", label=mechanism, **style)
        anchor = [(r["n"], r[key]) for r in _ok(report["results"], BASELINE) if r[key] > 0]
        if anchor:
            n_ref, value_ref = anchor[-1]
            lengths = report["settings"]["lengths"]
            span = [min(lengths), max(lengths)]
            for power, label in ((1, "O(n)"), (2, "O(n²)")):
                axis.plot(span, [value_ref * (n / n_ref) ** power for n in span], linestyle="--",
                          color="grey", alpha=0.6, linewidth=1)
                axis.annotate(label, (span[0], value_ref * (span[0] / n_ref) ** power), color="grey")
        axis.set(xscale="log", yscale="log", xlabel="sequence length n", title=title)
        axis.set_xticks(report["settings"]["lengths"], [str(n) for n in report["settings"]["lengths"]])
        axis.minorticks_off()
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    machine, settings = report["machine"], report["settings"]
    figure.suptitle(f"batch {settings['batch']}, {settings['heads']} heads, head dim {settings['head_dim']}; "
                    f"{machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
