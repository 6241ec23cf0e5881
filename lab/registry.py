"""Name -> class registries with typed, validated options.

Every pluggable part of the lab (attention mechanisms, poolings, backbones, tasks) lives in a
`Registry`. An entry's constructor signature *is* its option schema:

* keyword parameters **with** a default are options a user may set from the config
  (`attention.eps=0.5`); their annotations give the type that values are checked against;
* parameters **without** a default are supplied by code (a backbone gives an attention its
  `num_heads` and `head_dim`), and setting them from a config is an error.

So adding a mechanism never means editing a schema somewhere else, and an unknown or mistyped
option fails with one line that names the valid choices, closest match first.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
import operator
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, ClassVar, Literal


class ConfigError(ValueError):
    """A user-facing configuration mistake. `train.py` prints it as one line and exits 2."""


def closest_first(name: str, choices: typing.Iterable[str]) -> list[str]:
    """All `choices`, the ones most similar to `name` first."""
    choices = sorted(set(choices))
    if not choices:
        return ["(none)"]
    close = difflib.get_close_matches(name, choices, n=len(choices), cutoff=0.0)
    return close or choices


def unknown_choice_message(kind: str, name: str, choices: typing.Iterable[str]) -> str:
    return f"unknown {kind} '{name}'; valid choices: {', '.join(closest_first(str(name), choices))}"


@dataclass(frozen=True)
class Spec:
    """A registry entry chosen by name plus its options: what a config section hands to the code that
    builds it (`AttentionSpec`, `PoolingSpec` and `ModelSpec` are this type). `name=None`: the builder's
    default (a backbone's own pooling)."""

    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Bound:
    """A range constraint written next to the type: `batch_size: Annotated[int, AtLeast(1)] = 64`.

    `Option.check` enforces it on every config value (NaN never passes); a constructor option uses the
    same annotation, so its range needs no code of its own."""

    symbol: ClassVar[str]
    compare: ClassVar[Callable[[Any, Any], bool]]

    def __init__(self, limit: float):
        self.limit = limit

    def admits(self, value: Any) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        return self.compare(value, self.limit)

    def __repr__(self) -> str:
        return f"{self.symbol} {self.limit}"


class AtLeast(Bound):
    symbol, compare = ">=", operator.ge


class Above(Bound):
    symbol, compare = ">", operator.gt


class AtMost(Bound):
    symbol, compare = "<=", operator.le


class Below(Bound):
    symbol, compare = "<", operator.lt


@dataclass(frozen=True)
class Option:
    """One configurable parameter (of a registered constructor or a config section's dataclass).

    Every config value passes through `check`, so a constraint beyond the type (a range) belongs next to
    the annotation (`Annotated[int, AtLeast(1)]`, see `Bound`) and is enforced here.
    """

    name: str
    annotation: Any
    default: Any

    def check(self, value: Any, where: str) -> Any:
        """Return `value` coerced to this option's type, or raise ConfigError."""
        label = f"{where}.{self.name}" if where else self.name
        ok, coerced = _coerce(value, self.annotation)
        if not ok:
            raise ConfigError(f"{label} must be {_type_name(self.annotation)}, got {value!r}")
        bounds = _bounds(coerced, self.annotation)
        if not all(bound.admits(coerced) for bound in bounds):
            raise ConfigError(f"{label} must be {' and '.join(map(repr, bounds))}, got {value!r}")
        return coerced


def _bounds(value: Any, annotation: Any) -> list[Bound]:
    """The range constraints that apply to `value`: those of the annotation (or of the union member) it matched."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return [m for m in annotation.__metadata__ if isinstance(m, Bound)]
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            if _coerce(value, member)[0]:
                return _bounds(value, member)
    return []


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _type_name(annotation.__origin__)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if annotation is Any or annotation is inspect.Parameter.empty:
        return "any value"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Type-check a config value against an annotation; ints are accepted where floats are."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True, value
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _coerce(value, annotation.__origin__)
    if origin is Literal:
        return (value in typing.get_args(annotation)), value
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            ok, coerced = _coerce(value, member)
            if ok:
                return True, coerced
        return False, value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type) for v in value]
        if not all(ok for ok, _ in items):
            return False, value
        return True, origin(v for _, v in items)
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if annotation is dict:
        return isinstance(value, dict), value
    return isinstance(value, annotation), value


class Registry:
    """A named collection of constructors (classes or functions) of one kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: typing.Sequence[str] = ()):
        """Decorator: `@REGISTRY.register("esp")` adds the class under that name."""

        def decorator(obj: Callable) -> Callable:
            if name in self._entries and self._entries[name] is not obj:
                warnings.warn(f"{self.kind} '{name}' registered twice; the later one wins", stacklevel=2)
            self._entries[name] = obj
            for alias in aliases:
                self._aliases[alias] = name
            obj.registry_name = name
            return obj

        return decorator

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases; ConfigError if unknown."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise ConfigError(unknown_choice_message(self.kind, name, self._entries))

    def get(self, name: str) -> Callable:
        return self._entries[self.canonical(name)]

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def options(self, name: str) -> dict[str, Option]:
        """Configurable options of an entry: its keyword parameters that have defaults."""
        return configurable_options(self.get(name))

    def resolve_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """All options of `name` with `options` applied on top of the defaults, type-checked."""
        schema = self.options(name)
        supplied = code_supplied_parameters(self.get(name))
        resolved = {key: opt.default for key, opt in schema.items()}
        for key, value in options.items():
            if key in supplied:
                raise ConfigError(
                    f"{self.kind}.{key} is set by the code that builds '{name}', not by the config"
                )
            if key not in schema:
                raise ConfigError(
                    f"unknown option '{key}' for {self.kind} '{name}'; valid options: "
                    + ", ".join(closest_first(key, schema))
                )
            resolved[key] = schema[key].check(value, self.kind)
        return resolved

    def build(self, name: str, /, *args, **kwargs):
        """Construct `name`. Keyword arguments that are options are validated first."""
        entry = self.get(name)
        schema = configurable_options(entry)
        options = {k: v for k, v in kwargs.items() if k in schema}
        others = {k: v for k, v in kwargs.items() if k not in schema}
        unknown = set(others) - set(code_supplied_parameters(entry))
        if unknown and not _accepts_var_kwargs(entry):
            key = sorted(unknown)[0]
            raise ConfigError(
                f"unknown option '{key}' for {self.kind} '{name}'; valid options: "
                + ", ".join(closest_first(key, schema))
            )
        checked = {k: schema[k].check(v, self.kind) for k, v in options.items()}
        return entry(*args, **others, **checked)


def _signature(obj: Callable) -> inspect.Signature:
    return inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)


def _accepts_var_kwargs(obj: Callable) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in _signature(obj).parameters.values())


def _parameters(obj: Callable) -> list[inspect.Parameter]:
    params = list(_signature(obj).parameters.values())
    if inspect.isclass(obj) and params and params[0].name == "self":
        params = params[1:]
    return [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _hints(obj: Callable) -> dict[str, Any]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(target, include_extras=True)  # keeps Annotated ranges
    except Exception:  # unresolvable forward references: fall back to raw annotations
        return getattr(target, "__annotations__", {})


def configurable_options(obj: Callable) -> dict[str, Option]:
    hints = _hints(obj)
    return {
        p.name: Option(p.name, hints.get(p.name, Any), p.default)
        for p in _parameters(obj)
        if p.default is not inspect.Parameter.empty
    }


def code_supplied_parameters(obj: Callable) -> list[str]:
    return [p.name for p in _parameters(obj) if p.default is inspect.Parameter.empty]
