"""A small IWSLT'14 de-en release in the exact upstream layout, filled with the toy language of toy_german.py.

    de-en.tgz
      de-en/train.tags.de-en.de, de-en/train.tags.de-en.en   talks: <url>, <keywords>, <talkid>, <title>,
                                                             <description> header lines, then one segment a line
      de-en/IWSLT14.TED.dev2010.de-en.de.xml, ...en.xml      <mteval><srcset|refset><doc><seg id="N">
      (and TEDX.dev2012, TED.tst2010, TED.tst2011, TED.tst2012)

Titles and descriptions are translated text too (the fairseq script keeps them). A few training pairs are
ones the length filter must drop: blank lines, a thank-you whose English side is over 1.5 times longer, and
run-on sentences over 175 tokens. English test references spell some apostrophes ’ and escape others as
XML entities, as the real sets do.
"""
from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path
from xml.sax.saxutils import escape

from lab.files import written_whole

from .iwslt14_data import TEST_FILE, TEST_SETS, TRAIN_FILE
from .toy_german import sentence_pair

DESCRIPTION = {"de": "TED Talk Untertitel und Transkript: ", "en": "TED Talk Subtitles and Transcript: "}
UNEVEN_PAIR = {"de": "Danke.", "en": "Thank you so much, all of you, really, thank you."}


def run_on_pair(rng: random.Random) -> dict[str, str]:
    """Over 175 tokens on both sides: clauses joined by und/and."""
    pairs = [sentence_pair(rng) for _ in range(30)]
    return {"de": " und ".join(de.rstrip(".") for de, _ in pairs) + ".",
            "en": " and ".join(en.rstrip(".") for _, en in pairs) + "."}


def talk_header(talk: int, lang: str, title: str, description: str) -> list[str]:
    return [f"<url>http://www.ted.com/talks/lang/{lang}/toy_talk_{talk}.html</url>",
            "<keywords>talks, toy language, translation</keywords>", f"<talkid>{talk}</talkid>",
            f"<title>{title}</title>", f"<description>{DESCRIPTION[lang]}{description}</description>"]


def pair_to_drop(rng: random.Random, talk: int, line: int) -> dict[str, str] | None:
    """The pair the length filter must remove at this position of the corpus, if any."""
    if line == 0 and talk % 7 == 0:
        return {"de": "", "en": ""}
    if line == 1 and talk % 5 == 0:
        return UNEVEN_PAIR
    if line == 2 and talk % 11 == 0:
        return run_on_pair(rng)
    return None


def training_files(rng: random.Random, talks: int, lines_per_talk: int) -> tuple[dict[str, str], dict[str, int]]:
    """The two train.tags files and what they hold: {"pairs": text-line pairs, "filtered": pairs to drop}."""
    lines: dict[str, list[str]] = {"de": [], "en": []}
    pairs = filtered = 0
    for talk in range(1, talks + 1):
        title, description = sentence_pair(rng), sentence_pair(rng)
        for index, lang in enumerate(("de", "en")):
            lines[lang] += talk_header(talk, lang, title[index], description[index])
        pairs += 2
        for line in range(lines_per_talk):
            pair = pair_to_drop(rng, talk, line)
            filtered += pair is not None
            pair = pair or dict(zip(("de", "en"), sentence_pair(rng)))
            for lang in ("de", "en"):
                lines[lang].append(pair[lang])
            pairs += 1
    return {lang: "\n".join(text) + "\n" for lang, text in lines.items()}, {"pairs": pairs, "filtered": filtered}


def reference_text(text: str, rng: random.Random) -> str:
    """XML-escaped English with the apostrophes of some references typeset as ’ (read back as ')."""
    return escape(text.replace("'", "\u2019") if rng.random() < 0.5 else text, {"'": "&apos;"})


def test_file(name: str, lang: str, segments: list[str], docs: int, rng: random.Random) -> str:
    element = "srcset" if lang == "de" else "refset"
    languages = 'srclang="german"' + ("" if lang == "de" else ' trglang="english" refid="ref"')
    out = ['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>", f'<{element} setid="{name}" {languages}>']
    per_doc = -(-len(segments) // docs)
    for doc in range(docs):
        talk = 9000 + doc
        out += [f'<doc docid="{talk}" genre="lectures">', f"<url>http://www.ted.com/talks/toy_talk_{talk}.html</url>",
                f"<description>{DESCRIPTION[lang]}{name}</description>", "<keywords>talks, toy</keywords>",
                f"<title>{name} talk {doc}</title>", f"<talkid>{talk}</talkid>"]
        for number, text in enumerate(segments[doc * per_doc:(doc + 1) * per_doc], start=1):
            body = reference_text(text, rng) if lang == "en" else escape(text)
            out.append(f'<seg id="{number}"> {body} </seg>')
        out.append("</doc>")
    return "\n".join(out + [f"</{element}>", "</mteval>"]) + "\n"


def write_synthetic_release(archive: Path, *, talks: int = 250, lines_per_talk: int = 48,
                            test_segments: int = 100, seed: int = 0) -> dict[str, int]:
    """Write `archive` (de-en.tgz); returns {"pairs", "filtered", "test"}: what a correct reader must find."""
    rng = random.Random(seed)
    train, counts = training_files(rng, talks, lines_per_talk)
    files = {TRAIN_FILE.format(lang=lang): text for lang, text in train.items()}
    for name in TEST_SETS:
        pairs = [sentence_pair(rng) for _ in range(test_segments)]
        for index, lang in enumerate(("de", "en")):
            files[TEST_FILE.format(name=name, lang=lang)] = test_file(name, lang, [p[index] for p in pairs], 4, rng)
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(archive) as partial, tarfile.open(partial, "w:gz") as tar:
        for name, text in sorted(files.items()):
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"de-en/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return {**counts, "test": len(TEST_SETS) * test_segments}
