"""IWSLT'14: reading the release (archive and folder) as fairseq's script splits it, BLEU against independent
references, the refusal of a non-causal decoder before anything is written, and a short tracked run."""
from __future__ import annotations

import collections
import math
import re
import tarfile
from pathlib import Path

import pytest
import sacrebleu
import torch

import train
from lab.download import DataError
from tasks.bleu import detokenized_bleu, tokenized_bleu
from tasks.iwslt14 import Iwslt14
from tasks.iwslt14_data import read_prepared, read_release, split_release
from tasks.synthetic_iwslt14 import write_synthetic_release
from tasks.subword import EOS_ID, PAD_ID

SMALL = dict(talks=40, lines_per_talk=30, test_segments=24)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("release")
    counts = write_synthetic_release(folder / "de-en.tgz", **SMALL)
    return folder / "de-en.tgz", counts


def check_splits(splits, counts):
    kept = counts["pairs"] - counts["filtered"]
    assert {split: len(lines["de"]) for split, lines in splits.items()} == {
        "train": kept - kept // 23, "valid": kept // 23, "test": counts["test"]}
    for split in splits.values():
        assert len(split["de"]) == len(split["en"])
        for line in split["de"] + split["en"]:
            assert not re.search(r"<[^>]*>", line), line  # no markup reaches the text
            assert "\u2019" not in line and "&apos;" not in line and "&amp;" not in line
            assert line == line.strip() and line


def test_the_release_archive_is_split_as_the_fairseq_script_splits_it(release):
    archive, counts = release
    assert counts["filtered"] > 0, "the stand-in must exercise the length filter"
    splits = split_release(read_release(archive))
    check_splits(splits, counts)
    # titles and descriptions are kept as text, their tags stripped; <url>/<keywords>/<talkid> lines dropped
    assert any(line.startswith("TED Talk Subtitles and Transcript: ") for line in splits["train"]["en"])
    assert not any("toy_talk" in line or line.startswith("talks,") for line in splits["train"]["en"])
    assert any("'s " in line for line in splits["test"]["en"]), "typeset apostrophes are read back as '"


def test_an_extracted_folder_reads_the_same(release, tmp_path):
    archive, counts = release
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    assert (tmp_path / "de-en" / "train.tags.de-en.de").exists()
    assert split_release(read_release(tmp_path / "de-en")) == split_release(read_release(archive))


def test_the_task_prepares_from_the_folder_it_finds(release, tmp_path):
    archive, counts = release
    (tmp_path / "iwslt14").mkdir()
    (tmp_path / "iwslt14" / "de-en.tgz").write_bytes(archive.read_bytes())
    Iwslt14.prepare(tmp_path, download=False)
    check_splits(read_prepared(tmp_path / "iwslt14" / "prepared"), counts)


def test_a_missing_release_fails_in_one_line_saying_what_and_where(tmp_path):
    with pytest.raises(DataError) as error:
        Iwslt14.prepare(tmp_path, download=False)
    message = str(error.value)
    assert "\n" not in message and "de-en.tgz" in message and str(tmp_path / "iwslt14") in message


def test_a_wrong_checksum_is_refused(release, tmp_path):
    (tmp_path / "iwslt14").mkdir()
    (tmp_path / "iwslt14" / "de-en.tgz").write_bytes(release[0].read_bytes())
    with pytest.raises(DataError, match="corrupt"):
        Iwslt14.prepare(tmp_path, download=False, md5="0" * 32)


def test_an_incomplete_release_names_the_missing_files(tmp_path):
    (tmp_path / "de-en").mkdir()
    (tmp_path / "de-en" / "train.tags.de-en.de").write_text("Hallo.\n")
    with pytest.raises(DataError, match="IWSLT14.TED.tst2012.de-en.en.xml"):
        read_release(tmp_path / "de-en")


# -- BLEU -------------------------------------------------------------------------------------------
HYPOTHESES = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
REFERENCES = ["The dog bit the man.", "It was not unexpected.", "The man bit him first."]


def definition_bleu(hypotheses: list[list[str]], references: list[list[str]]) -> float:
    """Corpus BLEU-4 from its definition (Papineni et al. 2002): clipped n-gram precisions, brevity penalty."""
    matches, totals = [0] * 4, [0] * 4
    for hyp, ref in zip(hypotheses, references):
        for n in range(1, 5):
            hyp_ngrams = collections.Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            ref_ngrams = collections.Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum(min(c, ref_ngrams[g]) for g, c in hyp_ngrams.items())
            totals[n - 1] += max(0, len(hyp) - n + 1)
    hyp_len, ref_len = sum(map(len, hypotheses)), sum(map(len, references))
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * brevity * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / 4)


def test_detokenized_bleu_is_sacrebleus_number_with_its_signature():
    score, signature = detokenized_bleu(HYPOTHESES, REFERENCES)
    assert score == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score, abs=1e-9)
    assert score == pytest.approx(45.07, abs=0.005)  # sacreBLEU 2.6.0 on this pair (its README's example, 1 ref)
    assert signature == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"


def test_tokenized_bleu_is_the_definition_over_lowercased_moses_tokens():
    moses = {"The dog bit the man.": "the dog bit the man .", "It wasn't surprising.": "it wasn 't surprising .",
             "The man had just bitten him.": "the man had just bitten him .",
             "It was not unexpected.": "it was not unexpected .", "The man bit him first.": "the man bit him first ."}
    expected = definition_bleu([moses[h].split() for h in HYPOTHESES], [moses[r].split() for r in REFERENCES])
    assert tokenized_bleu(HYPOTHESES, REFERENCES, "en") == pytest.approx(expected, abs=1e-9)
