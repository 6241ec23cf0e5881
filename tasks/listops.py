"""ListOps (Nangia & Bowman 2018) as the Long Range Arena generates it (Tay et al. 2021, `lra_benchmarks/data/listops.py`).

An example is a tree of list operations over digits, written as a token sequence; its label is the
root's value (10 classes):

    [MAX 2 9 [MIN 4 7 ] 0 ]  ->  9        MAX, MIN; MED = the median, truncated (int(numpy.median));
                                         SM = the sum modulo 10

Generation, exactly as upstream (same random draws in the same order, so a `random.Random` seeded
like upstream's `random` gives the same trees): starting at depth 1, a node below `max_depth` is an
operator with probability 0.25 (else a uniform digit); an operator draws 2..`max_args` children,
generates them, then draws its operator uniformly from MIN, MAX, MED, SM. The length counts 2 per
operator (its opening token and "]") and 1 per digit; a tree is kept when min_length < length <
max_length (strictly) and it is new. The benchmark: depth 10, 10 arguments, lengths in (500, 2000),
96,000 / 2,000 / 2,000 unique trees split in generation order (upstream splits a Python set's
iteration order, which is arbitrary; the trees are i.i.d. either way).

On disk as the release's `listops-1000/basic_{train,val,test}.tsv`: a `Source\tTarget` header, then
one tree per line in the generator's parenthesised binary form, `( ( ( [MAX 2 ) 9 ) ] )`, and its value.
Reading drops "(" and ")" (the LRA pipeline's fix for its stripped-bracket bug), which leaves exactly
the generator's `length` tokens.
"""
from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from lab.download import DataError

MIN, MAX, MED, SUM_MOD, CLOSE = "[MIN", "[MAX", "[MED", "[SM", "]"
OPERATORS = (MIN, MAX, MED, SUM_MOD)  # upstream's order: it matters for the seeded draws
OPERATOR_PROBABILITY = 0.25
VOCABULARY = ("<pad>", *OPERATORS, CLOSE, *(str(d) for d in range(10)))  # id 0 = padding
TOKEN_IDS = {token: index for index, token in enumerate(VOCABULARY)}
SPLITS = ("train", "val", "test")

Tree = Union[int, tuple[str, tuple["Tree", ...]]]  # a digit, or (operator, children)


@dataclass(frozen=True)
class ListOpsSetting:
    max_depth: int = 10
    max_args: int = 10
    min_length: int = 500  # exclusive
    max_length: int = 2000  # exclusive
    sizes: tuple[int, int, int] = (96_000, 2_000, 2_000)  # train, val, test


BENCHMARK = ListOpsSetting()


def generate_tree(rng: random.Random, max_depth: int, max_args: int, depth: int = 1) -> tuple[Tree, int]:
    """One random tree and its length in tokens (upstream's `generate_tree`, draw for draw)."""
    draw = rng.random() if depth < max_depth else 1.0
    if draw > OPERATOR_PROBABILITY:
        return rng.choice(range(10)), 1
    length = 2
    children = []
    for _ in range(rng.randint(2, max_args)):
        child, child_length = generate_tree(rng, max_depth, max_args, depth + 1)
        children.append(child)
        length += child_length
    return (rng.choice(OPERATORS), tuple(children)), length


def evaluate(tree: Tree) -> int:
    if isinstance(tree, int):
        return tree
    operator, children = tree
    values = sorted(evaluate(child) for child in children)
    if operator == MIN:
        return values[0]
    if operator == MAX:
        return values[-1]
    if operator == MED:
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) // 2
    return sum(values) % 10


def release_string(tree: Tree) -> str:
    """The release's parenthesised binary form: [MAX 2 9 ] -> `( ( ( [MAX 2 ) 9 ) ] )`."""
    if isinstance(tree, int):
        return str(tree)
    operator, children = tree
    text = f"( {operator} {release_string(children[0])} )"
    for child in children[1:]:
        text = f"( {text} {release_string(child)} )"
    return f"( {text} {CLOSE} )"


def generate(setting: ListOpsSetting, seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    """`setting.sizes` unique trees as (release string, value), split train / val / test in generation order."""
    rng = random.Random(seed)
    trees: dict[Tree, None] = {}
    while len(trees) < sum(setting.sizes):
        tree, length = generate_tree(rng, setting.max_depth, setting.max_args)
        if setting.min_length < length < setting.max_length:
            trees.setdefault(tree)
    rows = [(release_string(tree), evaluate(tree)) for tree in trees]
    train, val, _ = setting.sizes
    return {"train": rows[:train], "val": rows[train:train + val], "test": rows[train + val:]}


def tsv_path(folder: Path, split: str) -> Path:
    return Path(folder) / f"basic_{split}.tsv"


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    """Atomically write the release's TSV (header `Source\\tTarget`)."""
    partial = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["Source", "Target"])
        writer.writerows(rows)
    os.replace(partial, path)


def read_tsv(path: Path) -> list[tuple[str, int]]:
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = next(reader, None)
            if header != ["Source", "Target"]:
                raise DataError(f"{path} is not a ListOps TSV (header {header}, expected Source, Target)")
            return [(source, int(target)) for source, target in reader]
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path} ({error}); delete it and prepare lra_listops again") from None


def tokenize(source: str) -> list[int]:
    """Token ids of a release string: "(" and ")" dropped, the rest as in `VOCABULARY`."""
    try:
        return [TOKEN_IDS[token] for token in source.split() if token not in ("(", ")")]
    except KeyError as error:
        raise DataError(f"unknown ListOps token {error} in {source[:60]!r}...") from None
