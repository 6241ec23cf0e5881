"""The papers' numbers (evaluation/paper_numbers.yaml, SPEC §9) and the rule that puts one beside a row of ours:
the row's runs used the paper setting's preset, with nothing changed. Whether anything changed is decided by
composing the preset as train.py would (`task=… experiment=… attention=…` plus the setting's own arguments)
and comparing its configuration with the runs' params, key by key, runtime keys aside."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import train
from lab.config import load_yaml
from lab.download import DataError
from lab.registry import ConfigError
from lab.tracking import flatten

from .rows import Row, RunRecord, mean_std, setting_of

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.yaml")
UNIT_SCALE = {"percent": 0.01, "fraction": 1.0, "bleu": 1.0}  # paper unit -> our metric's scale


@dataclass(frozen=True)
class PaperNumber:
    source: str
    caveat: str
    task: str
    experiment: str | None  # the preset that reproduces the setting; None: no preset of ours does
    args: tuple[str, ...]  # further train.py arguments of the setting
    metric: str  # bare name of our test metric (`accuracy`)
    model: str  # the paper's name for it (or the compared attention for a gain)
    attention: str | None  # our mechanism; None: not in this lab
    value: float  # on our metric's scale (a gain: the difference to the best baseline)
    kind: str = "absolute"  # or "gain"
    baselines: tuple[str, ...] = ()
    free: tuple[str, ...] = ()  # key prefixes the paper leaves open (not compared)


def load_paper_numbers(path: Path = PAPER_NUMBERS) -> list[PaperNumber]:
    numbers = []
    for table in load_yaml(path).get("tables", []):
        common = {"source": table["source"], "caveat": " ".join(str(table.get("caveat", "")).split())}
        settings = table.get("setting") or {}
        if table.get("kind") == "gain":
            for task, setting in settings.items():
                numbers.append(PaperNumber(**common, **_setting(setting), task=task, metric=setting["metric"],
                                           model=table["attention"], attention=table["attention"],
                                           value=setting["gain"] * UNIT_SCALE[setting["unit"]], kind="gain",
                                           baselines=tuple(table["baselines"])))
            continue
        for row in table["rows"]:
            for task, value in row.items():
                if task in ("model", "attention"):
                    continue
                numbers.append(PaperNumber(**common, **_setting(settings.get(task, {})), task=task,
                                           metric=table["metric"], model=row["model"], attention=row["attention"],
                                           value=value * UNIT_SCALE[table["unit"]]))
    return numbers


def _setting(setting: dict) -> dict:
    return {"experiment": setting.get("experiment"), "args": tuple(setting.get("args", ())),
            "free": tuple(setting.get("free", ()))}


def preset_differences(run: RunRecord, number: PaperNumber) -> list[str] | None:
    """The settings in which `run` differs from the paper's preset (`key=ours (preset value)`); None when the
    preset cannot be composed in this version of the lab (its task or experiment file does not exist)."""
    args = [f"task={number.task}", f"experiment={number.experiment}", f"attention={run.tags.get('attention')}",
            *number.args]
    for group in ("model", "pooling"):  # an explicit choice of the run; unset means the preset's
        if run.params.get(f"{group}.name", "None") != "None":
            args.append(f"{group}={run.params[f'{group}.name']}")
    try:
        preset = train.load_config(args)
    except (ConfigError, DataError):
        return None
    ours, theirs = run.setting, setting_of({k: str(v) for k, v in flatten(preset.to_dict()).items()})
    return [f"{key}={ours.get(key, '-')} (preset {theirs.get(key, '-')})" for key in sorted(set(ours) | set(theirs))
            if ours.get(key) != theirs.get(key) and not key.startswith(number.free)]


def numbers_beside(row: Row, numbers: list[PaperNumber]) -> tuple[list[PaperNumber], str]:
    """The absolute paper numbers for `row` and, when there are candidates that do not apply, why not."""
    candidates = [n for n in numbers if n.kind == "absolute" and n.task == row.task and n.attention == row.attention
                  and n.experiment is not None and n.experiment == row.experiment]
    if not candidates:
        return [], ""
    differences = preset_differences(row.runs[0], candidates[0])
    if differences is None:
        return [], f"preset {row.experiment} is not defined in this version"
    if differences:
        return [], f"runs differ from preset {row.experiment}: " + ", ".join(differences[:4]) + \
            (" ..." if len(differences) > 4 else "")
    return candidates, ""


@dataclass
class Gain:
    number: PaperNumber
    ours: float | None  # our mean of the compared attention minus the best baseline mean; None: rows missing
    detail: str


def gains(rows: list[Row], numbers: list[PaperNumber]) -> list[Gain]:
    """Each paper gain for the task of `rows`, with ours from the rows that ran the same preset unchanged."""
    out = []
    for number in (n for n in numbers if n.kind == "gain" and rows and n.task == rows[0].task):
        metric = f"test/{number.metric}"
        means = {row.attention: mean_std(row.values(metric))[0] for row in rows
                 if row.experiment == number.experiment and row.attention in (number.attention, *number.baselines)
                 and row.values(metric) and preset_differences(row.runs[0], number) == []}
        baselines = {name: value for name, value in means.items() if name in number.baselines}
        if number.attention not in means or not baselines:
            out.append(Gain(number, None, f"needs unchanged {number.experiment} runs of {number.attention} and of "
                                          f"{' or '.join(number.baselines)}"))
            continue
        best = max(baselines, key=baselines.get)
        ours = means[number.attention]
        out.append(Gain(number, ours - baselines[best],
                        f"{number.attention} {ours:.4f} vs best baseline {best} {baselines[best]:.4f}"))
    return out
