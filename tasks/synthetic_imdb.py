"""A small, learnable stand-in for IMDB written in the `aclImdb/` layout (for tests and CPU demos).

A review is 15-60 words of neutral movie-talk filler with 3-5 sentiment phrases dropped in at random
places; 15% of the phrases are negated ("not brilliant" is negative). The label is the sign of the
phrases' net polarity, at least one phrase in the majority, so a model must find the phrases amid the
filler, and to be always right read a negation together with the word after it: counting sentiment
words alone is right on ~86% of the reviews, reading the negations on all. Reviews carry
`<br /><br />` breaks like the real ones.

Files as in the archive: `aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt` (ratings 7-10 / 1-4, one
line each), `aclImdb/train/unsup/<id>_0.txt` (unlabelled, mixed polarity), `aclImdb/imdb.vocab` (one
word per line) and a README.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

POSITIVE = ("brilliant", "wonderful", "superb", "moving", "delightful", "gripping", "charming", "excellent",
            "masterful", "hilarious", "stunning", "touching", "memorable", "great", "enjoyable")
NEGATIVE = ("awful", "boring", "dreadful", "clumsy", "tedious", "terrible", "lifeless", "dull", "painful",
            "forgettable", "pointless", "wooden", "bland", "predictable", "messy")
NEGATIONS = ("not", "never", "hardly")
FILLER = tuple("""the a an this that movie film story plot scene scenes actor actress cast director script
camera music score ending beginning middle character characters dialogue role roles screen studio
sequel version minutes hour night city town house family friend friends father mother brother sister
man woman child children people time year years day world life war love money work school car road
train ship island river mountain village it he she they we i you his her their its our my your
is was were are be been has had have does did will would could should may might can with without from
into onto about over under after before during while when where then than as at by for of on in to
and or but so because also just only even still again once twice very quite rather some many few
more most other another each every both all any such same new old first last second third long short
big small young early late next final whole entire who which what whose whom saw watched seen shows
shown plays played tells told follows followed begins starts ends opens takes makes goes comes runs
looks feels seems becomes turns gets""".split())
WORDS = (*FILLER, *POSITIVE, *NEGATIVE, *NEGATIONS)
NEGATION_PROBABILITY = 0.15


def review(label: int, rng: np.random.Generator, words: tuple[int, int] = (15, 60),
           negation: float = NEGATION_PROBABILITY) -> str:
    """One review whose sentiment phrases net to `label` (1 positive, 0 negative)."""
    count = int(rng.integers(3, 6))
    majority = int(rng.integers(count // 2 + 1, count + 1))
    polarities = [1] * majority + [-1] * (count - majority)  # +1 = agrees with the label
    phrases = []
    for agrees in polarities:
        positive = (agrees == 1) == (label == 1)
        negated = rng.random() < negation
        word = rng.choice(NEGATIVE if positive == negated else POSITIVE)  # a negation flips the word's polarity
        phrases.append(f"{rng.choice(NEGATIONS)} {word}" if negated else str(word))
    text_words = list(rng.choice(FILLER, size=int(rng.integers(*words))))
    for phrase in phrases:
        text_words.insert(int(rng.integers(0, len(text_words) + 1)), phrase)
    for _ in range(int(rng.integers(0, 3))):
        text_words.insert(int(rng.integers(1, len(text_words))), "<br /><br />")
    text = " ".join(text_words)
    return text[0].upper() + text[1:] + "."


def write_synthetic_aclimdb(root: Path, train_per_class: int = 4000, test_per_class: int = 1000,
                            unsupervised: int = 200, seed: int = 0, **review_options) -> Path:
    """Write `root/aclImdb/` in the archive's layout; returns that folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "aclImdb"
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(("neg", "pos")):
            target = folder / split / name
            target.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                rating = int(rng.integers(7, 11) if label else rng.integers(1, 5))
                (target / f"{index}_{rating}.txt").write_text(review(label, rng, **review_options))
    unsup = folder / "train" / "unsup"
    unsup.mkdir(parents=True, exist_ok=True)
    for index in range(unsupervised):
        (unsup / f"{index}_0.txt").write_text(review(int(rng.integers(0, 2)), rng))
    (folder / "imdb.vocab").write_text("\n".join(WORDS) + "\n")
    (folder / "README").write_text("Synthetic stand-in for the Large Movie Review Dataset v1.0 (aclImdb), written "
                                   "by tasks/synthetic_imdb.py in the same layout.\n")
    return folder
