"""ListOps: the generator's trees, values and lengths against an independent evaluator, the release's TSV
format, the `tasks.prepare` command, and a short learning run on the synthetic stand-in."""
from __future__ import annotations

import random

import numpy as np
import pytest

from tasks.listops import (BENCHMARK, VOCABULARY, ListOpsSetting, evaluate, generate, generate_tree, read_tsv,
                           release_string, tokenize, tsv_path, write_generated)
from tasks.lra import LISTOPS_FOLDER, LraListops


def stack_value(source: str) -> int:
    """Independent evaluator of a release string: a stack machine over the tokens, numpy's median."""
    stack: list[list] = [[]]
    for token in source.split():
        if token in ("(", ")"):
            continue
        if token.startswith("["):
            stack.append([token])
        elif token == "]":
            operator, *args = stack.pop()
            value = {"[MAX": max, "[MIN": min, "[MED": lambda a: int(np.median(a)),
                     "[SM": lambda a: int(np.sum(a)) % 10}[operator](args)
            stack[-1].append(value)
        else:
            stack[-1].append(int(token))
    (value,) = stack[0]
    return value


HAND_WRITTEN = [  # (tree in plain notation, value worked out by hand)
    ("[MAX 2 9 ]", 9),
    ("[MIN 4 7 3 8 ]", 3),
    ("[MED 1 2 3 4 ]", 2),  # median 2.5, truncated
    ("[MED 9 0 8 ]", 8),
    ("[SM 9 9 5 ]", 3),  # 23 mod 10
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[SM [MED 5 6 ] [MAX 1 [MIN 8 9 ] ] 7 ]", 0),  # 5 + 8 + 7 = 20
    ("[MIN [SM 7 8 ] [MED 3 9 1 ] ]", 3),  # min(5, 3)
]


def parse_plain(text: str):
    """'[MAX 2 [MIN 4 7 ] ]' -> the generator's tree form (operator, children)."""
    tokens = text.split()

    def node(i):
        if not tokens[i].startswith("["):
            return int(tokens[i]), i + 1
        operator, children, i = tokens[i], [], i + 1
        while tokens[i] != "]":
            child, i = node(i)
            children.append(child)
        return (operator, tuple(children)), i + 1

    tree, end = node(0)
    assert end == len(tokens)
    return tree


@pytest.mark.parametrize("plain,value", HAND_WRITTEN)
def test_values_of_hand_written_trees(plain, value):
    tree = parse_plain(plain)
    assert evaluate(tree) == value
    assert stack_value(release_string(tree)) == value
    assert [VOCABULARY[i] for i in tokenize(release_string(tree))] == plain.split()


def test_release_string_is_the_generators_binary_form():
    assert release_string(parse_plain("[MAX 2 9 ]")) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert release_string(7) == "7"


def test_benchmark_setting_lengths_uniqueness_and_labels():
    rows = list(generate(ListOpsSetting(sizes=(40, 5, 5)), seed=3))
    assert [split for split, _, _ in rows] == ["train"] * 40 + ["val"] * 5 + ["test"] * 5
    assert len({source for _, source, _ in rows}) == 50
    for _, source, label in rows:
        assert BENCHMARK.min_length < len(tokenize(source)) < BENCHMARK.max_length
        assert stack_value(source) == label


def test_generator_grammar():
    """Operators have 2..max_args children, leaves sit at depth <= max_depth, the length counts 2 per
    operator and 1 per digit, and about a quarter of the nodes below max_depth are operators."""
    rng = random.Random(0)
    operators = nodes = 0

    def walk(tree, depth):
        nonlocal operators, nodes
        assert depth <= 4
        nodes += depth < 4
        if isinstance(tree, int):
            return 1
        operators += 1
        assert 2 <= len(tree[1]) <= 6
        return 2 + sum(walk(child, depth + 1) for child in tree[1])

    for _ in range(400):
        tree, length = generate_tree(rng, max_depth=4, max_args=6)
        assert walk(tree, 1) == length == len(tokenize(release_string(tree)))
    assert 0.2 < operators / nodes < 0.3


def write_release_tsv(path, rows):
    """The release's format, written independently of the generator's writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("Source\tTarget\n" + "".join(f"{source}\t{label}\n" for source, label in rows))


def test_tsv_round_trip(tmp_path):
    setting = ListOpsSetting(max_depth=4, max_args=4, min_length=5, max_length=40, sizes=(20, 2, 2))
    rows = list(generate(setting))
    write_generated(tmp_path, setting)
    for split in ("train", "val", "test"):
        expected = [(source, label) for s, source, label in rows if s == split]
        assert read_tsv(tsv_path(tmp_path, split)) == expected
        copy = tmp_path / "copy" / f"{split}.tsv"
        write_release_tsv(copy, expected)
        assert copy.read_text() == tsv_path(tmp_path, split).read_text().replace("\r\n", "\n")
    assert not list(tmp_path.glob("*.part"))


def test_prepare_command_generates_tsvs_an_independent_evaluator_agrees_with(tmp_path, monkeypatch):
    """`python -m tasks.prepare lra_listops --root D` generates (here at the benchmark's lengths with fewer
    trees), and every label agrees with the independent evaluator."""
    from tasks.prepare import main as prepare

    monkeypatch.setattr("tasks.lra.BENCHMARK", ListOpsSetting(sizes=(60, 10, 10)))
    assert prepare(["lra_listops", "--root", str(tmp_path), "--no-download"]) == 0
    folder = tmp_path / "lra_release" / LISTOPS_FOLDER
    for split, size in (("train", 60), ("val", 10), ("test", 10)):
        rows = read_tsv(tsv_path(folder, split))
        assert len(rows) == size
        assert all(stack_value(source) == label for source, label in rows)
    stamp = tsv_path(folder, "train").stat().st_mtime_ns
    assert prepare(["lra_listops", "--root", str(tmp_path)]) == 0
    assert tsv_path(folder, "train").stat().st_mtime_ns == stamp  # written once, then reused


def test_release_tsvs_are_found_below_the_root(tmp_path):
    """An unpacked release nests its folders in lra_release/lra_release/: found by name, and read."""
    folder = tmp_path / "lra_release" / "lra_release" / LISTOPS_FOLDER
    for split in ("train", "val", "test"):
        write_release_tsv(tsv_path(folder, split), [(release_string(parse_plain(p)), v) for p, v in HAND_WRITTEN])
    task = LraListops(data_root=tmp_path, download=False, max_length=12)
    task.setup()
    assert LraListops.folder(tmp_path) == folder
    dataset = task.datasets()["test"]
    assert len(dataset) == len(HAND_WRITTEN) and dataset.labels.tolist() == [v for _, v in HAND_WRITTEN]
    assert max(len(t) for t in dataset.tokens) == 12  # truncated to max_length like the LRA pipeline
    batch = task.collate([dataset[0], dataset[6]])
    assert batch["tokens"].shape == (2, 12) and batch["padding_mask"][0].tolist() == [False] * 4 + [True] * 8
