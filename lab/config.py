"""Typed configuration: YAML groups + dotted command-line overrides, checked before anything runs.

    python train.py task=modelnet40 attention=esp [pooling=cswe] [model=set_transformer]
                    [experiment=NAME] [trainer.lr=3e-4 attention.inv_temperature=1 ...]

Composition, later wins:
1. `configs/train.yaml` (defaults; its `groups:` names the default task),
2. `configs/task/<task>.yaml` (a global overlay: `task:`, `trainer:` ...; its `model:`, `attention:`
   and `pooling:` sections name the task's default choice and its settings for that choice),
3. for each of model / attention / pooling, chosen on the command line, by the experiment, by the task
   file or by train.yaml: the section is `{name: <choice>}` + `configs/<group>/<choice>.yaml` (if it
   exists) + the task file's section when the task's choice is the one made (another choice drops
   the task's settings for its default),
4. `configs/experiment/<name>.yaml` (only the deltas of one paper setting; may hold `groups:`),
5. dotted overrides from the command line.

Schema: the fixed sections are the dataclasses below; `task`, `model`, `attention` and `pooling` are
`Component`s whose options are checked against the registered constructor's signature
(see lab/registry.py). Unknown keys, unknown names and wrong types raise `ConfigError` naming the valid
choices, closest match first.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .registry import ConfigError, Option, Registry, closest_first, configurable_options

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"
GROUPS = ("task", "model", "attention", "pooling", "experiment")


@dataclass
class TrainerConfig:
    epochs: int = 10  # passes over the training set; defines the LR schedule length
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit); the schedule is unchanged
    batch_size: int = 64
    lr: float = 1e-3  # peak learning rate
    optimizer: Literal["adamw", "adam"] = "adamw"
    weight_decay: float = 0.05  # AdamW only; not applied to biases, norms, embeddings
    beta2: float = 0.999
    warmup_fraction: float = 0.05  # linear warm-up over this fraction of all steps, then cosine
    min_lr_fraction: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    accumulate: int = 1  # micro-batches per optimizer step
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    eval_every: int = 0  # optimizer steps between validations; 0 = after every epoch
    log_every: int = 10  # optimizer steps between train/* metric logs
    num_workers: int = 0  # DataLoader worker processes


@dataclass
class DataConfig:
    root: str = "./data"  # dataset folder; each task uses its upstream layout below it
    download: bool = True  # fetch missing data (False: fail with instructions instead)


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"  # relative sqlite paths are relative to the project root
    experiment: str | None = None  # MLflow experiment; default = the task name
    log_checkpoint: bool = False  # also upload best.pt as a run artifact
    system_metrics: bool = True  # MLflow's CPU/GPU/memory sampling


@dataclass
class Component:
    """A registry entry chosen by name plus its options (validated against its constructor)."""

    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    resume: str | None = "auto"  # auto: continue the latest interrupted run with this name and config; PATH: that checkpoint; null: fresh
    output_dir: str = "runs"  # checkpoints go to <output_dir>/<run name>/<timestamp>/
    task: Component = field(default_factory=Component)
    model: Component = field(default_factory=Component)
    attention: Component = field(default_factory=Component)
    pooling: Component = field(default_factory=Component)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def run_name(self) -> str:
        return f"{self.task.name}-{self.attention.name}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Component):
                out[f.name] = {"name": value.name, **value.options}
            elif dataclasses.is_dataclass(value):
                out[f.name] = dataclasses.asdict(value)
            else:
                out[f.name] = value
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = {"trainer": TrainerConfig, "data": DataConfig, "tracking": TrackingConfig}
COMPONENTS = ("task", "model", "attention", "pooling")


# -- YAML with YAML-1.2 floats (PyYAML reads "1e-3" as a string) --------------------------------
class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?(?:[eE][-+]?\d+)$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def deep_merge(base: dict, overlay: dict) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# -- registries, imported lazily so that `--help` stays fast -------------------------------------
def registries() -> dict[str, Registry]:
    from attention.pooling.base import POOLINGS
    from attention.registry import ATTENTIONS
    from backbones import BACKBONES
    from tasks import TASKS

    return {"task": TASKS, "model": BACKBONES, "attention": ATTENTIONS, "pooling": POOLINGS}


def group_file(group: str, name: str) -> Path:
    return CONFIG_DIR / group / f"{name}.yaml"


def experiment_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


# -- command line --------------------------------------------------------------------------------
def parse_args(args: list[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Split `key=value` arguments into group choices and dotted overrides."""
    choices: dict[str, str] = {}
    overrides: list[tuple[str, str]] = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got '{arg}' (e.g. task=cifar10 trainer.lr=3e-4)")
        key, raw = arg.split("=", 1)
        if key in GROUPS:
            choices[key] = raw
        else:
            overrides.append((key, raw))
    return choices, overrides


def compose(args: list[str]) -> dict[str, Any]:
    """The merged, not yet validated config tree for these command-line arguments."""
    cli_choices, overrides = parse_args(args)
    tree = load_yaml(CONFIG_DIR / "train.yaml")
    defaults = tree.pop("groups", {}) or {}

    experiment: dict[str, Any] = {}
    if "experiment" in cli_choices:
        name = cli_choices["experiment"]
        if name not in experiment_names():
            raise ConfigError(f"unknown experiment '{name}'; valid choices: "
                              + ", ".join(closest_first(name, experiment_names())))
        experiment = load_yaml(group_file("experiment", name))
    experiment_choices = experiment.pop("groups", {}) or {}

    reg = registries()
    task_name = cli_choices.get("task") or experiment_choices.get("task") or defaults.get("task")
    task_name = reg["task"].canonical(str(task_name))
    task_file = group_file("task", task_name)
    task_tree = load_yaml(task_file) if task_file.exists() else {}
    task_sections = {group: task_tree.pop(group, None) or {} for group in ("model", "attention", "pooling")}
    tree = deep_merge(tree, task_tree)
    tree.setdefault("task", {})["name"] = task_name

    for group in ("model", "attention", "pooling"):
        task_section = task_sections[group]
        choice = (cli_choices.get(group) or experiment_choices.get(group) or task_section.get("name")
                  or defaults.get(group))
        if choice is None:
            continue
        name = reg[group].canonical(str(choice))
        section = {"name": name}
        if group_file(group, name).exists():
            section = deep_merge(section, load_yaml(group_file(group, name)).get(group, {}) or {})
        if task_section.get("name") and reg[group].canonical(str(task_section["name"])) == name:
            section = deep_merge(section, task_section)  # the task's settings for its own default choice
        section["name"] = name
        tree[group] = section

    tree = deep_merge(tree, experiment)
    for key, raw in overrides:
        apply_override(tree, key, raw, reg)
    return tree


def apply_override(tree: dict[str, Any], key: str, raw: str, reg: dict[str, Registry]) -> None:
    """Set `key` (dotted) to the command-line string `raw`, parsed as YAML and type-checked."""
    parts = key.split(".")
    top = parts[0]
    valid_top = [f.name for f in dataclasses.fields(Config)]
    if top not in valid_top:
        raise ConfigError(f"unknown key '{key}'; valid keys: {', '.join(closest_first(top, valid_top))}")
    if len(parts) == 1:
        if top in SECTIONS or top in COMPONENTS:
            raise ConfigError(f"'{key}' is a section; set one of its keys, e.g. {top}.<key>=value")
        tree[top] = parse_option_value(raw, _top_level_option(top), key)
        return
    if len(parts) != 2:
        raise ConfigError(f"unknown key '{key}': keys are <section>.<name>")
    name = parts[1]
    if top in SECTIONS:
        schema = {f.name: Option(f.name, _field_type(SECTIONS[top], f.name), f.default)
                  for f in dataclasses.fields(SECTIONS[top])}
        if name not in schema:
            raise ConfigError(f"unknown key '{key}'; valid keys: "
                              + ", ".join(f"{top}.{k}" for k in closest_first(name, schema)))
        tree.setdefault(top, {})[name] = parse_option_value(raw, schema[name], key)
        return
    section = tree.setdefault(top, {})
    if name == "name":
        section["name"] = raw
        return
    if not section.get("name"):
        raise ConfigError(f"choose a {top} first (e.g. {top}=NAME) before setting {key}")
    schema = configurable_options(reg[top].get(section["name"]))
    option = schema.get(name)
    # an unknown key is kept as parsed YAML and reported on validation
    section[name] = parse_option_value(raw, option, key) if option else parse_yaml(raw)


def _field_type(cls: type, name: str) -> Any:
    import typing

    return typing.get_type_hints(cls)[name]


def _top_level_option(name: str) -> Option:
    return Option(name, _field_type(Config, name), None)


def parse_option_value(raw: str, option: Option, key: str) -> Any:
    """Parse a command-line string for `option`: YAML first, the raw string if the option takes text."""
    where = key.rsplit(".", 1)[0] if "." in key else ""
    value = parse_yaml(raw) if raw != "" else None
    try:
        return option.check(value, where)
    except ConfigError:
        return option.check(raw, where)


# -- validation -----------------------------------------------------------------------------------
def validate(tree: dict[str, Any]) -> Config:
    """Turn a composed tree into a typed `Config`, or raise ConfigError naming what is wrong."""
    reg = registries()
    valid_top = [f.name for f in dataclasses.fields(Config)]
    for key in tree:
        if key not in valid_top:
            raise ConfigError(f"unknown key '{key}'; valid keys: {', '.join(closest_first(key, valid_top))}")
    hints = {f.name: _field_type(Config, f.name) for f in dataclasses.fields(Config)}
    kwargs: dict[str, Any] = {}
    for key in valid_top:
        if key not in tree:
            continue
        value = tree[key]
        if key in SECTIONS:
            kwargs[key] = _section(SECTIONS[key], value or {}, key)
        elif key in COMPONENTS:
            kwargs[key] = _component(key, value or {}, reg[key])
        else:
            kwargs[key] = Option(key, hints[key], None).check(value, "")
    config = Config(**kwargs)
    for key in ("task", "model", "attention"):
        if getattr(config, key).name is None:
            raise ConfigError(f"no {key} chosen; pass {key}=NAME")
    return config


def _section(cls: type, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"'{where}' must be a mapping")
    schema = {f.name: Option(f.name, _field_type(cls, f.name), f.default) for f in dataclasses.fields(cls)}
    checked = {}
    for key, value in values.items():
        if key not in schema:
            raise ConfigError(f"unknown key '{where}.{key}'; valid keys: "
                              + ", ".join(f"{where}.{k}" for k in closest_first(key, schema)))
        checked[key] = schema[key].check(value, where)
    return cls(**checked)


def _component(group: str, values: dict[str, Any], registry: Registry) -> Component:
    if not isinstance(values, dict):
        raise ConfigError(f"'{group}' must be a mapping with a 'name'")
    options = dict(values)
    name = options.pop("name", None)
    if name is None:
        if options:
            raise ConfigError(f"{group} options given but no {group} chosen; pass {group}=NAME")
        return Component(None, {})
    name = registry.canonical(str(name))
    return Component(name, registry.resolve_options(name, options))


def load_config(args: list[str]) -> Config:
    return validate(compose(args))


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. stored in a checkpoint)."""
    return validate(tree)
