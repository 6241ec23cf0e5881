"""A small, learnable stand-in for the LRA retrieval task (AAN citation pairs), in the release's TSV layout.

Each synthetic "paper" belongs to one of `topics` research topics: amid generic academic filler it
mentions its topic's invented technical terms five times, at random places anywhere in the text (a
topic's terms are built from its own syllables, as a field has its own vocabulary). A pair is labelled
1 ("cites") when both papers share a topic and 0 otherwise, half and half.
Every topic is equally likely in every position of a pair, so a single document says nothing about
the label: a model has to recognise both papers' topics and compare them, which is what the two-tower
harness is built for. Files: `tsv_data/new_aan_pairs.{train,eval,test}.tsv`, lines
`label<TAB>id1<TAB>id2<TAB>text1<TAB>text2`, labels written as `1.0` / `0.0`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .aan import FILES

FILLER = tuple("""we propose present describe study evaluate show that the a an of in on for with by from this
paper approach method model system results experiments data corpus task performance baseline
significant improvement over previous work using based our their these which is are was were can be
also both each between across several two three first second however moreover finally in addition
table figure section shows compare report analysis accuracy error rate large small set sets number
features training test evaluation annotated english language text sentence sentences word words
""".split())
SYLLABLES = ("qua", "zor", "vex", "lim", "tar", "pho", "gri", "dun", "kel", "sab", "ruv", "mon", "jex", "wol",
             "bic", "yat", "nup", "fes", "hod", "cyl")


def topic_terms(topics: int, per_topic: int, rng: np.random.Generator) -> list[list[str]]:
    """`per_topic` distinct invented three-syllable terms for each topic, each topic from its own syllables
    (papers of one field share a vocabulary)."""
    syllables = rng.permutation(SYLLABLES)
    groups = np.array_split(syllables, topics)
    terms = []
    for group in groups:
        chosen: set[str] = set()
        while len(chosen) < per_topic:
            chosen.add("".join(rng.choice(group, size=3)))
        terms.append(sorted(chosen))
    return terms


def paper(terms: list[str], rng: np.random.Generator, words: tuple[int, int], mentions: int = 5) -> str:
    text = list(rng.choice(FILLER, size=int(rng.integers(*words))))
    for _ in range(mentions):
        text.insert(int(rng.integers(0, len(text) + 1)), str(rng.choice(terms)))
    return " ".join(text)


def write_synthetic_aan(folder: Path, sizes: tuple[int, int, int] = (4000, 500, 500), topics: int = 4,
                        words: tuple[int, int] = (15, 40), seed: int = 0) -> Path:
    """Write `folder/new_aan_pairs.{train,eval,test}.tsv` (folder: …/tsv_data) with `sizes` pairs."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = topic_terms(topics, 3, rng)
    paper_id = 0
    for name, size in zip(FILES.values(), sizes):
        lines = []
        for index in range(size):
            label = index % 2
            first = int(rng.integers(topics))
            second = first if label else (first + int(rng.integers(1, topics))) % topics
            texts = [paper(vocabulary[topic], rng, words) for topic in (first, second)]
            lines.append(f"{float(label)}\t{paper_id}\t{paper_id + 1}\t{texts[0]}\t{texts[1]}\n")
            paper_id += 2
        order = rng.permutation(len(lines))
        (folder / name).write_text("".join(lines[i] for i in order))
    return folder
