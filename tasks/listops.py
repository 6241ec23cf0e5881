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

import bisect
import contextlib
import csv
import hashlib
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from lab.download import DataError
from lab.files import written_whole

MIN, MAX, MED, SUM_MOD, CLOSE = "[MIN", "[MAX", "[MED", "[SM", "]"
OPERATORS = (MIN, MAX, MED, SUM_MOD)  # upstream's order: it matters for the seeded draws
OPERATOR_PROBABILITY = 0.25
VOCABULARY = ("<pad>", *OPERATORS, CLOSE, *(str(d) for d in range(10)))  # id 0 = padding
TOKEN_IDS = {token: index for index, token in enumerate(VOCABULARY)}
SPLITS = ("train", "val", "test")
HEADER = ["Source", "Target"]

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


def generate(setting: ListOpsSetting, seed: int = 0) -> Iterator[tuple[str, str, int]]:
    """`setting.sizes` unique trees as (split, release string, value), train then val then test in
    generation order. Only a digest of each string is kept for deduplication (100k trees of ~6 KB)."""
    rng = random.Random(seed)
    seen: set[bytes] = set()
    bounds = list(itertools.accumulate(setting.sizes))
    while len(seen) < bounds[-1]:
        tree, length = generate_tree(rng, setting.max_depth, setting.max_args)
        if not setting.min_length < length < setting.max_length:
            continue
        source = release_string(tree)
        digest = hashlib.blake2b(source.encode(), digest_size=16).digest()
        if digest not in seen:
            split = SPLITS[bisect.bisect_right(bounds, len(seen))]
            seen.add(digest)
            yield split, source, evaluate(tree)


def write_generated(folder: Path, setting: ListOpsSetting, seed: int = 0) -> None:
    """Generate into `folder/basic_{train,val,test}.tsv`, streamed to temporary files renamed at the end."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as files:
        partials = {split: files.enter_context(written_whole(tsv_path(folder, split))) for split in SPLITS}
        with contextlib.ExitStack() as open_files:
            writers = {split: csv.writer(open_files.enter_context(open(path, "w", newline="")), delimiter="\t")
                       for split, path in partials.items()}
            for writer in writers.values():
                writer.writerow(HEADER)
            for split, source, value in generate(setting, seed):
                writers[split].writerow((source, value))


def tsv_path(folder: Path, split: str) -> Path:
    return Path(folder) / f"basic_{split}.tsv"


def read_tsv(path: Path) -> list[tuple[str, int]]:
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = next(reader, None)
            if header != HEADER:
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
