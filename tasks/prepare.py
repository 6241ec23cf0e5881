"""Download, verify and preprocess a task's dataset (or write a synthetic stand-in).

    python -m tasks.prepare cifar10 [--root ./data]            # the real data (downloads if needed)
    python -m tasks.prepare modelnet40 --root D --synthetic    # small learnable data, upstream format
    python -m tasks.prepare protein --option dataset=flip_scl  # a task's own preparation option

Exit code 2 with one line when the data is missing and cannot be fetched.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lab.config import parse_option_value
from lab.download import DataError, require_folder
from lab.registry import ConfigError, closest_first, configurable_options

from . import TASKS


def task_options(task_cls, pairs: list[str]) -> dict[str, Any]:
    """`["dataset=flip_scl"]` -> `{"dataset": "flip_scl"}`: the options of the task's `prepare` (beyond the
    command's own flags), parsed and type-checked like config overrides."""
    schema = {name: option for name, option in configurable_options(task_cls.prepare).items()
              if name not in ("synthetic", "download")}
    options = {}
    for pair in pairs:
        key, equals, raw = pair.partition("=")
        if not equals or not key:
            raise ConfigError(f"bad --option {pair!r}: expected KEY=VALUE")
        if key not in schema:
            raise ConfigError(f"task {task_cls.registry_name} has no preparation option '{key}'; valid options: "
                              + (", ".join(closest_first(key, schema)) if schema else "none"))
        options[key] = parse_option_value(raw, schema[key], key)
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("task", help="task name: " + ", ".join(TASKS.names()))
    parser.add_argument("--root", default="./data", help="dataset folder (default ./data)")
    parser.add_argument("--synthetic", action="store_true",
                        help="write a small learnable stand-in in the upstream on-disk format")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a task's own preparation option (repeatable), e.g. dataset=flip_scl for protein")
    args = parser.parse_args(argv)
    try:
        task_cls = TASKS.get(args.task)
        options = task_options(task_cls, args.option)
        require_folder(Path(args.root), "--root")
        task_cls.prepare(Path(args.root), synthetic=args.synthetic, download=not args.no_download, **options)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    what = "synthetic stand-in for" if args.synthetic else "data for"
    print(f"{what} {task_cls.registry_name} ready under {Path(args.root).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
