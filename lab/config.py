"""Typed configuration: YAML groups + dotted command-line overrides, checked before anything runs.

    python train.py task=modelnet40 attention=esp [pooling=cswe] [model=set_transformer]
                    [experiment=NAME] [trainer.lr=3e-4 attention.inv_temperature=1 ...]

Composition, later wins:
1. `configs/train.yaml` (defaults; its `groups:` names the default task),
2. `configs/task/<task>.yaml` (a global overlay: `task:`, `trainer:` ...; its sections for the other
   component groups (`model:`, `attention:`, `pooling:`) name the task's default choice and its settings
   for that choice),
3. for each other component group, chosen on the command line, by the experiment, by the task file or by
   train.yaml: the section is `{name: <choice>}` + `configs/<group>/<choice>.yaml` (if it exists) + the
   task file's section when the task's choice is the one made (another choice drops the task's settings
   for its default),
4. `configs/experiment/<name>.yaml` (only the deltas of one paper setting; may hold `groups:`),
5. dotted overrides from the command line.

The run name says what differs from the task's defaults: `<task>-<attention>[-<model>][-<pooling>]
[-<experiment>]-s<seed>`, the backbone and pooling named only when they are not the default choice of the
task (or of the experiment), the experiment whenever one is applied; `run_name=NAME` sets it explicitly.

Schema: the fixed sections are the dataclasses below (their fields' annotations and defaults are the
schema); the component groups are the rows of a table the caller passes in (`train.py`'s `COMPONENTS`):
each is a `Spec` whose options are checked against the registered constructor's signature (see
lab/registry.py). Every value, a dataclass field or a constructor option, passes `Option.check`, so a
constraint beyond the type (a range such as `batch_size >= 1`) is declared next to the annotation and
enforced there. Unknown keys, unknown names and wrong types raise `ConfigError` naming the valid choices,
closest match first.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import yaml

from .registry import (AtLeast, AtMost, Above, Below, ConfigError, Option, Registry, Spec, closest_first,
                       configurable_options)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"
TASK = "task"  # the component group whose YAML file also sets the defaults of the other groups
EXPERIMENT = "experiment"  # a preset chosen like a group (`experiment=NAME`), not from a registry


@dataclass(frozen=True)
class ComponentGroup:
    """One row of the component table: a config section whose value is a registry entry chosen by name
    (`attention=esp`) with its constructor's options (`attention.eps=0.5`)."""

    key: str
    registry: Registry
    required: bool = True  # False: unset means `Spec(None)`, the builder's own default
    always_named: bool = False  # in every run name; otherwise only when the choice is not the default one


@dataclass
class TrainerConfig:
    epochs: Annotated[int, AtLeast(0)] = 10  # passes over the training set; defines the LR schedule length (0: evaluate only)
    max_steps: Annotated[int, AtLeast(0)] = 0  # stop after this many optimizer steps (0 = no limit); the schedule is unchanged
    batch_size: Annotated[int, AtLeast(1)] = 64  # per process (torchrun: the global batch is this x the process count)
    lr: Annotated[float, Above(0)] = 1e-3  # peak learning rate
    optimizer: Literal["adamw", "adam"] = "adamw"
    weight_decay: Annotated[float, AtLeast(0)] = 0.05  # AdamW only; not applied to biases, norms, embeddings
    beta2: Annotated[float, AtLeast(0), Below(1)] = 0.999
    warmup_fraction: Annotated[float, AtLeast(0), AtMost(1)] = 0.05  # linear warm-up over this fraction of all steps, then the schedule
    warmup_steps: Annotated[int, AtLeast(0)] = 0  # > 0: warm-up over this many steps instead (fairseq's IWSLT recipe: 4000)
    schedule: Literal["cosine", "inverse_sqrt"] = "cosine"  # after warm-up: cosine to min_lr, or lr·√(warmup/step)
    min_lr_fraction: Annotated[float, AtLeast(0), AtMost(1)] = 0.0  # cosine floor as a fraction of lr
    grad_clip: Annotated[float, AtLeast(0)] = 1.0  # max global grad norm; 0 = off
    accumulate: Annotated[int, AtLeast(1)] = 1  # micro-batches per optimizer step
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    eval_every: Annotated[int, AtLeast(0)] = 0  # optimizer steps between validations; 0 = after every epoch
    log_every: Annotated[int, AtLeast(1)] = 10  # optimizer steps between train/* metric logs
    num_workers: Annotated[int, AtLeast(0)] = 0  # DataLoader worker processes
    # LOTFormer's two-stage conversion (with `init`): stage 1 fits only the tensors the new attention adds
    stage1_steps: Annotated[int, AtLeast(0)] = 0  # stage 1 steps before ordinary training (stage 2); 0 = no stage 1
    stage1_lr: Annotated[float, Above(0)] = 1e-3  # stage 1's constant Adam learning rate
    stage1_target: Literal["attention", "outputs"] = "attention"  # match softmax's attention rows (n x n) or outputs


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
    diagnostics_every: Annotated[int, AtLeast(0)] = 1  # validations between attention-diagnostic figures (0 = only the final test ones)
    sweep: str | None = None  # the sweep this run belongs to (set by `make sweep`; logged as the `sweep` tag)


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    resume: str | None = "auto"  # auto: continue the latest interrupted run with this name and config; PATH: that checkpoint; null: fresh
    output_dir: str = "runs"  # checkpoints go to <output_dir>/<run name>/<timestamp>/
    init: str | None = None  # start from trained weights: torchvision:<vit name>[.<weights>] or a checkpoint path
    components: dict[str, Spec] = field(default_factory=dict)  # one per component group: cfg.task, cfg.model ...
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    experiment: str | None = None  # the paper preset applied (`experiment=NAME`, configs/experiment/); recorded
    run_name: str | None = None  # MLflow run and checkpoint folder; null = derived from the choices (see above)

    def __getattr__(self, name: str) -> Spec:
        """`cfg.attention` is `cfg.components["attention"]` (only called for names that are not fields)."""
        components = self.__dict__.get("components", {})
        if name in components:
            return components[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or component group '{name}'")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "components":
                out.update({key: {"name": spec.name, **spec.options} for key, spec in value.items()})
            elif dataclasses.is_dataclass(value):
                out[f.name] = dataclasses.asdict(value)
            else:
                out[f.name] = value
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _schema() -> tuple[dict[str, Option], dict[str, type]]:
    """Config's top-level scalar keys (as options) and its sections (name -> dataclass)."""
    fields = {name: option for name, option in configurable_options(Config).items() if name != "components"}
    sections = {name: option.annotation for name, option in fields.items()
                if dataclasses.is_dataclass(option.annotation)}
    return {name: option for name, option in fields.items() if name not in sections}, sections


# -- YAML with YAML-1.2 floats (PyYAML reads "1e-3" as a string) --------------------------------
class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats; every config file is read with it."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?(?:[eE][-+]?\d+)$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)


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


def group_file(group: str, name: str) -> Path:
    return CONFIG_DIR / group / f"{name}.yaml"


def experiment_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / EXPERIMENT).glob("*.yaml"))


# -- command line --------------------------------------------------------------------------------
def parse_args(args: list[str], groups: Sequence[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Split `key=value` arguments into choices of `groups` and dotted overrides."""
    choices: dict[str, str] = {}
    overrides: list[tuple[str, str]] = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got '{arg}' (e.g. task=cifar10 trainer.lr=3e-4)")
        key, raw = arg.split("=", 1)
        if key in groups:
            choices[key] = raw
        else:
            overrides.append((key, raw))
    return choices, overrides


def compose(args: list[str], components: Sequence[ComponentGroup]) -> dict[str, Any]:
    """The merged, not yet validated config tree for these command-line arguments."""
    registries = {group.key: group.registry for group in components}
    cli_choices, overrides = parse_args(args, [*registries, EXPERIMENT])
    tree = load_yaml(CONFIG_DIR / "train.yaml")
    defaults = tree.pop("groups", {}) or {}

    experiment: dict[str, Any] = {}
    if EXPERIMENT in cli_choices:
        name = cli_choices[EXPERIMENT]
        if name not in experiment_names():
            raise ConfigError(f"unknown experiment '{name}'; valid choices: "
                              + ", ".join(closest_first(name, experiment_names())))
        experiment = load_yaml(group_file(EXPERIMENT, name))
    experiment_choices = experiment.pop("groups", {}) or {}

    task_name = cli_choices.get(TASK) or experiment_choices.get(TASK) or defaults.get(TASK)
    task_name = registries[TASK].canonical(str(task_name))
    task_file = group_file(TASK, task_name)
    task_tree = load_yaml(task_file) if task_file.exists() else {}
    others = [key for key in registries if key != TASK]
    task_sections = {key: task_tree.pop(key, None) or {} for key in others}
    tree = deep_merge(tree, task_tree)
    tree.setdefault(TASK, {})["name"] = task_name

    for key in others:
        task_section = task_sections[key]
        choice = (cli_choices.get(key) or experiment_choices.get(key) or task_section.get("name")
                  or defaults.get(key))
        if choice is None:
            continue
        name = registries[key].canonical(str(choice))
        section = {"name": name}
        if group_file(key, name).exists():
            section = deep_merge(section, load_yaml(group_file(key, name)).get(key, {}) or {})
        if task_section.get("name") and registries[key].canonical(str(task_section["name"])) == name:
            section = deep_merge(section, task_section)  # the task's settings for its own default choice
        section["name"] = name
        tree[key] = section

    tree = deep_merge(tree, experiment)
    for key, raw in overrides:
        apply_override(tree, key, raw, registries)
    tree[EXPERIMENT] = cli_choices.get(EXPERIMENT)
    if tree.get("run_name") is None:
        default_choices = {key: experiment_choices.get(key) or task_sections[key].get("name") or defaults.get(key)
                           for key in others}
        tree["run_name"] = default_run_name(tree, default_choices, components)
    return tree


def default_run_name(tree: dict[str, Any], default_choices: dict[str, str | None],
                     components: Sequence[ComponentGroup]) -> str:
    """`<task>-<attention>[-<model>][-<pooling>][-<experiment>]-s<seed>`: the `always_named` groups, then each
    other group whose choice differs from `default_choices` (the task's or the experiment's), the experiment
    when one is applied, and the seed: the name says what differs from the defaults."""
    def chosen(group: ComponentGroup, name: Any) -> str | None:
        return None if name is None else group.registry.canonical(str(name))

    always = [group for group in components if group.always_named]
    parts = [chosen(group, (tree.get(group.key) or {}).get("name")) for group in always]
    for group in components:
        choice = chosen(group, (tree.get(group.key) or {}).get("name"))
        if group not in always and choice is not None and choice != chosen(group, default_choices.get(group.key)):
            parts.append(choice)
    if tree.get(EXPERIMENT):
        parts.append(tree[EXPERIMENT])
    return "-".join([*map(str, parts), f"s{tree.get('seed', Config.seed)}"])


def apply_override(tree: dict[str, Any], key: str, raw: str, registries: dict[str, Registry]) -> None:
    """Set `key` (dotted) to the command-line string `raw`, parsed as YAML and type-checked."""
    scalars, sections = _schema()
    parts = key.split(".")
    top = parts[0]
    valid_top = [*scalars, *registries, *sections]
    if top not in valid_top:
        raise ConfigError(f"unknown key '{key}'; valid keys: {', '.join(closest_first(top, valid_top))}")
    if len(parts) == 1:
        if top not in scalars:
            raise ConfigError(f"'{key}' is a section; set one of its keys, e.g. {top}.<key>=value")
        tree[top] = parse_option_value(raw, scalars[top], key)
        return
    if len(parts) != 2:
        raise ConfigError(f"unknown key '{key}': keys are <section>.<name>")
    name = parts[1]
    if top in scalars:
        raise ConfigError(f"'{top}' is a value, not a section; set it as {top}=value")
    if top in sections:
        schema = configurable_options(sections[top])
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
    option = registries[top].options(section["name"]).get(name)
    # an unknown key is kept as parsed YAML and reported on validation
    section[name] = parse_option_value(raw, option, key) if option else parse_yaml(raw)


def parse_option_value(raw: str, option: Option, key: str) -> Any:
    """Parse a command-line string for `option`: YAML first, the raw string if the option takes text."""
    where = key.rsplit(".", 1)[0] if "." in key else ""
    value = parse_yaml(raw) if raw != "" else None
    try:
        return option.check(value, where)
    except ConfigError as error:  # the text itself, for an option that takes text; else the parsed value's error
        try:
            return option.check(raw, where)
        except ConfigError:
            raise error from None


# -- validation -----------------------------------------------------------------------------------
def validate(tree: dict[str, Any], components: Sequence[ComponentGroup]) -> Config:
    """Turn a composed tree into a typed `Config`, or raise ConfigError naming what is wrong."""
    scalars, sections = _schema()
    groups = {group.key: group for group in components}
    valid_top = [*scalars, *groups, *sections]
    for key in tree:
        if key not in valid_top:
            raise ConfigError(f"unknown key '{key}'; valid keys: {', '.join(closest_first(key, valid_top))}")
    kwargs: dict[str, Any] = {key: scalars[key].check(tree[key], "") for key in scalars if key in tree}
    kwargs.update({key: _section(cls, tree.get(key) or {}, key) for key, cls in sections.items()})
    kwargs["components"] = {key: _component(group, tree.get(key) or {}) for key, group in groups.items()}
    return Config(**kwargs)


def _section(cls: type, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"'{where}' must be a mapping")
    schema = configurable_options(cls)
    checked = {}
    for key, value in values.items():
        if key not in schema:
            raise ConfigError(f"unknown key '{where}.{key}'; valid keys: "
                              + ", ".join(f"{where}.{k}" for k in closest_first(key, schema)))
        checked[key] = schema[key].check(value, where)
    return cls(**checked)


def _component(group: ComponentGroup, values: dict[str, Any]) -> Spec:
    if not isinstance(values, dict):
        raise ConfigError(f"'{group.key}' must be a mapping with a 'name'")
    options = dict(values)
    name = options.pop("name", None)
    if name is None:
        if group.required:
            raise ConfigError(f"no {group.key} chosen; pass {group.key}=NAME")
        if options:
            raise ConfigError(f"{group.key} options given but no {group.key} chosen; pass {group.key}=NAME")
        return Spec(None, {})
    name = group.registry.canonical(str(name))
    return Spec(name, group.registry.resolve_options(name, options))


def load_config(args: list[str], components: Sequence[ComponentGroup]) -> Config:
    """The validated config for command-line `args`; `components` is the composition root's table."""
    return validate(compose(args, components), components)
