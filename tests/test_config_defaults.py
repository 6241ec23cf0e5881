"""Each default lives in one place, the code: a YAML value either restates it or is marked deliberate.

The constructor signatures (attention, pooling, backbone, task) and the config dataclasses hold the
defaults. The YAML files under configs/ restate many of them as documentation (train.yaml, the
attention and pooling files) or set them for a task or a paper (task and experiment files). Every such
value is checked here against the code's default for the entry it applies to, read with the
application's own YAML loader (PyYAML's plain safe loader reads `1e-3` as a string). A value that is
meant to differ from the code, or to stay as it is when the code's default changes, carries the marker
`# preset` in a comment on its own line or on its section's line (e.g. `dim: 64  # preset: CPU-sized`).
Experiment files hold only the settings of one paper, so all their values are deliberate (their keys are
still checked to be options of the code).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import train
from lab.config import CONFIG_DIR, Config, YamlLoader, load_yaml
from lab.registry import Option, configurable_options

MARKER = re.compile(r"#\s*preset\b")
GROUPS = {group.key: group for group in train.COMPONENTS}
FILES = sorted(CONFIG_DIR.rglob("*.yaml"))


def restated_values(path: Path) -> list[tuple[str | None, str, object, bool, int]]:
    """(section or None for a top-level key, key, value, marked deliberate, line) for every value in `path`."""
    lines = path.read_text().splitlines()
    values = load_yaml(path)
    root = yaml.compose(path.read_text(), Loader=YamlLoader)
    out = []
    for key_node, value_node in (root.value if root is not None else []):
        section = key_node.value
        section_marked = path.parent.name == "experiment" or bool(MARKER.search(lines[key_node.start_mark.line]))
        if section == "groups":  # choices of entries, not options
            continue
        if not isinstance(value_node, yaml.MappingNode):
            out.append((None, section, values[section], section_marked, key_node.start_mark.line + 1))
            continue
        for option_node, _ in value_node.value:
            key, line = option_node.value, option_node.start_mark.line
            if key != "name":
                marked = section_marked or bool(MARKER.search(lines[line]))
                out.append((section, key, values[section][key], marked, line + 1))
    return out


def entry_for(path: Path, group: str) -> str:
    """The registry entry that a section `group` of the file `path` configures in a real run."""
    kind = path.parent.name
    if kind == group:  # configs/attention/esp.yaml -> esp
        return path.stem
    if kind in ("task", "experiment"):
        return getattr(train.load_config([f"{kind}={path.stem}"]), group).name
    raise AssertionError(f"{path}: no rule says which {group} its '{group}:' section configures")


def code_defaults(path: Path, section: str | None) -> dict[str, Option]:
    if section in GROUPS:
        return GROUPS[section].registry.options(entry_for(path, section))
    top = {name: option for name, option in configurable_options(Config).items() if name != "components"}
    if section is None:
        return top
    return configurable_options(top[section].annotation)


def cases() -> list:
    """One case per (kind of section, YAML file holding it): every registry, and the Config dataclasses."""
    found = {}
    for path in FILES:
        for section, *_ in restated_values(path):
            kind = section if section in GROUPS else "config"
            found.setdefault((kind, path), None)
    return [pytest.param(kind, path, id=f"{kind}:{path.relative_to(CONFIG_DIR)}") for kind, path in found]


def test_every_registry_and_the_config_sections_are_covered():
    assert {kind for kind, _ in (case.values for case in cases())} == {*GROUPS, "config"}


@pytest.mark.parametrize("kind, path", cases())
def test_yaml_values_restate_the_code_defaults_unless_marked(kind, path):
    drifted = []
    for section, key, value, marked, line in restated_values(path):
        if (section if section in GROUPS else "config") != kind:
            continue
        schema = code_defaults(path, section)
        label = f"{section}.{key}" if section else key
        assert key in schema, f"{path}:{line}: {label} is not an option of the code"
        if marked:
            continue
        option = schema[key]
        if option.check(value, section or "") != option.default:
            drifted.append(f"{path.relative_to(CONFIG_DIR.parent)}:{line}: {label} is {value!r}, "
                           f"the code's default is {option.default!r}")
    assert not drifted, ("YAML restates a default the code does not have (fix the YAML, or mark a deliberate "
                         "setting with a '# preset' comment on its line or its section's line):\n"
                         + "\n".join(drifted))
