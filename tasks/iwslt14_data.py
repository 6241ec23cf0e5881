"""IWSLT'14 German-English TED talks: the 2014-01 `de-en.tgz` release, split as fairseq's
`examples/translation/prepare-iwslt14.sh` splits it, kept as plain (detokenized) text.

The release (the archive, or its extracted `de-en/` folder):

    train.tags.de-en.de, train.tags.de-en.en       one segment per line; each talk opens with header lines
                                                   (<url>, <keywords>, <talkid>, <title>, <description>)
    IWSLT14.TED.dev2010.de-en.de.xml, ...en.xml    <doc>s of <seg id="N"> segments; also TED.tst2010-2012
                                                   and TEDX.dev2012

What the script does, and so what this module does:
1. training text: drop the lines holding <url>, <talkid> or <keywords>; strip the <title> and <description>
   tags and keep their text;
2. `clean-corpus-n.perl -ratio 1.5 ... 1 175`: drop pairs with a side of fewer than 1 or more than 175 tokens
   or whose token counts differ by a factor above 1.5 (tokens as Moses' tokenizer makes them: sacremoses
   stands in for tokenizer.perl);
3. valid = every 23rd remaining pair, train = the others;
4. test = the <seg> texts of dev2010, TEDX.dev2012, tst2010, tst2011, tst2012 in this order, ’ read as '
   (never length-filtered).
Real release: train 160,239, valid 7,283, test 6,750 pairs. Unlike the script, the text is neither
Moses-tokenized nor lowercased afterwards: the SentencePiece model reads raw text and BLEU is computed on
detokenized output. The XML is read with a real parser, the archive without extracting it.
"""
from __future__ import annotations

import os
import re
import tarfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from lab.download import DataError
from lab.files import written_whole

LANGUAGES = ("de", "en")
SPLITS = ("train", "valid", "test")
TRAIN_FILE = "train.tags.de-en.{lang}"
TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010", "IWSLT14.TED.tst2011",
             "IWSLT14.TED.tst2012")
TEST_FILE = "{name}.de-en.{lang}.xml"
DROPPED_LINES = ("<url>", "<talkid>", "<keywords>")
STRIPPED_TAGS = re.compile(r"</?(?:title|description)>")
VALID_EVERY = 23
MIN_TOKENS, MAX_TOKENS, MAX_RATIO, MAX_WORD_LENGTH = 1, 175, 1.5, 1000


def required_files() -> list[str]:
    return ([TRAIN_FILE.format(lang=lang) for lang in LANGUAGES]
            + [TEST_FILE.format(name=name, lang=lang) for name in TEST_SETS for lang in LANGUAGES])


def read_release(path: Path) -> dict[str, str]:
    """{file name: text} of the release files, from `de-en.tgz` or an extracted folder."""
    path, wanted = Path(path), set(required_files())
    files: dict[str, str] = {}
    if path.is_dir():
        for file in path.rglob("*"):
            if file.name in wanted and file.is_file():
                files[file.name] = file.read_text(encoding="utf-8")
    else:
        try:
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    name = os.path.basename(member.name)
                    if name in wanted and member.isfile():
                        files[name] = archive.extractfile(member).read().decode("utf-8")
        except (tarfile.TarError, OSError, EOFError) as error:
            raise DataError(f"cannot read {path} ({error}); delete it and fetch the release again") from None
    missing = sorted(wanted - set(files))
    if missing:
        raise DataError(f"{path} is not the IWSLT'14 de-en release: it lacks {', '.join(missing)}")
    return files


def training_lines(text: str) -> list[str]:
    """The training segments of a train.tags file, header lines handled as the fairseq script does."""
    return [STRIPPED_TAGS.sub("", line) for line in text.splitlines()
            if not any(marker in line for marker in DROPPED_LINES)]


def segments(xml_text: str, name: str) -> list[str]:
    """The <seg> texts of an IWSLT XML set, in document order, stripped, with ’ read as '."""
    try:
        root = ElementTree.fromstring(xml_text)
    except ElementTree.ParseError as error:
        raise DataError(f"{name} is not well-formed XML ({error}); fetch the release again") from None
    return [(seg.text or "").strip().replace("\u2019", "'") for seg in root.iter("seg")]


def moses_tokenizer(lang: str):
    """line -> the tokens Moses' tokenizer.perl (as sacremoses ports it, no escaping) splits it into."""
    from sacremoses import MosesTokenizer

    tokenizer = MosesTokenizer(lang=lang)
    return lambda line: tokenizer.tokenize(line, escape=False)


def keep_pair(source_tokens: list[str], target_tokens: list[str]) -> bool:
    """clean-corpus-n.perl's test for one pair (ratio 1.5, 1-175 tokens, no word over 1,000 characters)."""
    counts = len(source_tokens), len(target_tokens)
    if min(counts) < MIN_TOKENS or max(counts) > MAX_TOKENS:
        return False
    if max(counts) / min(counts) > MAX_RATIO:
        return False
    return all(len(token) <= MAX_WORD_LENGTH for token in source_tokens + target_tokens)


def split_release(files: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """{split: {lang: lines}} for train / valid / test, following the fairseq script."""
    train = {lang: training_lines(files[TRAIN_FILE.format(lang=lang)]) for lang in LANGUAGES}
    if len(train["de"]) != len(train["en"]):
        raise DataError(f"train.tags.de-en.de and .en have {len(train['de'])} and {len(train['en'])} text lines; "
                        "the release is damaged: fetch it again")
    tokenize = {lang: moses_tokenizer(lang) for lang in LANGUAGES}
    kept = [(de, en) for de, en in zip(train["de"], train["en"])
            if keep_pair(tokenize["de"](" ".join(de.split())), tokenize["en"](" ".join(en.split())))]
    splits = {"train": {lang: [] for lang in LANGUAGES}, "valid": {lang: [] for lang in LANGUAGES}}
    for number, pair in enumerate(kept, start=1):
        split = "valid" if number % VALID_EVERY == 0 else "train"
        for lang, line in zip(LANGUAGES, pair):
            splits[split][lang].append(" ".join(line.split()))  # whitespace normalised as clean-corpus-n does
    splits["test"] = {lang: [] for lang in LANGUAGES}
    for name in TEST_SETS:
        sets = {lang: segments(files[TEST_FILE.format(name=name, lang=lang)], name) for lang in LANGUAGES}
        if len(sets["de"]) != len(sets["en"]):
            raise DataError(f"{name}: {len(sets['de'])} German and {len(sets['en'])} English segments")
        for lang in LANGUAGES:
            splits["test"][lang].extend(sets[lang])
    return splits


def prepared_files(folder: Path) -> dict[tuple[str, str], Path]:
    return {(split, lang): Path(folder) / f"{split}.{lang}" for split in SPLITS for lang in LANGUAGES}


def write_prepared(splits: dict[str, dict[str, list[str]]], folder: Path) -> None:
    """One text file per split and language (`train.de` ...), written to a temporary folder and renamed."""
    folder = Path(folder)
    with written_whole(folder) as partial:
        partial.mkdir(parents=True)
        for (split, lang), path in prepared_files(partial).items():
            path.write_text("".join(line + "\n" for line in splits[split][lang]), encoding="utf-8")


def read_prepared(folder: Path) -> dict[str, dict[str, list[str]]]:
    splits: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    for (split, lang), path in prepared_files(folder).items():
        splits[split][lang] = path.read_text(encoding="utf-8").splitlines()
    return splits
