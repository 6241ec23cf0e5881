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


# -- the task -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory, release):
    root = tmp_path_factory.mktemp("data")
    (root / "iwslt14").mkdir()
    (root / "iwslt14" / "de-en.tgz").write_bytes(release[0].read_bytes())
    return root


def test_metrics_decode_subword_ids_and_score_them_in_the_original_order(data_root):
    task = Iwslt14(data_root=data_root, download=False, val_subset=0)
    task.setup()
    references = task.text["val"]["en"]
    wrong = references[1:] + references[:1]  # every other hypothesis is another sentence's reference
    expected = [r if i % 2 == 0 else w for i, (r, w) in enumerate(zip(references, wrong))]
    assert [task.subword.decode(task.subword.encode(t)) for t in expected] == expected, "SentencePiece round trip"
    rows = [torch.tensor(task.subword.encode(text)) for text in expected]
    hypotheses = torch.full((len(rows), task.max_length), PAD_ID)
    for i, row in enumerate(rows):
        hypotheses[i, :len(row)] = row
    shuffled = torch.randperm(len(rows))  # outputs arrive in batch (length-sorted) order, not corpus order
    outputs = {"index": shuffled, "hypothesis": hypotheses[shuffled], "nll": torch.ones(len(rows)),
               "tokens": torch.full((len(rows),), 4)}
    evaluation = task.metrics(outputs, "val")
    assert evaluation.metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(expected, [references]).score)
    assert 20 < evaluation.metrics["bleu"] < 90
    assert evaluation.metrics["loss"] == pytest.approx(0.25)
    table = evaluation.texts["translations_val.tsv"].splitlines()
    assert table[0] == "source\treference\thypothesis" and len(table) == len(references) + 1
    assert table[1].split("\t") == [task.text["val"]["de"][0], references[0], expected[0]]


def test_batches_end_sources_with_eos_and_shift_targets(data_root):
    task = Iwslt14(data_root=data_root, download=False)
    task.setup()
    batch = task.collate([task.splits["train"][i] for i in range(4)])
    lengths = (~batch["source_padding_mask"]).sum(1)
    assert (batch["source_tokens"][torch.arange(4), lengths - 1] == EOS_ID).all()
    assert torch.equal(batch["target_tokens"][:, 1:].masked_fill(batch["target_padding_mask"][:, 1:], PAD_ID),
                       batch["labels"][:, :-1].masked_fill(batch["labels"][:, :-1] == EOS_ID, PAD_ID))


def run_args(tmp: Path, data_root: Path, *extra: str) -> list[str]:
    return ["task=iwslt14", "attention=softmax", f"data.root={data_root}", f"output_dir={tmp}/runs",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db", "tracking.system_metrics=false", *extra]


def test_a_non_causal_decoder_exits_2_in_one_line_and_writes_nothing(tmp_path, data_root, capsys):
    assert train.main(run_args(tmp_path, data_root, "model.decoder_attention=esp")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decoder_attention=esp" in err[0] and "linear, luna, performer, softmax" in err[0]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_a_short_run_learns_and_is_tracked_with_bleu_signature_and_samples(tmp_path, data_root):
    from mlflow.tracking import MlflowClient

    tiny = ["model.dim=64", "model.encoder_depth=1", "model.decoder_depth=1", "model.num_heads=2", "trainer.epochs=3",
            "trainer.batch_size=32", "trainer.lr=3e-3", "trainer.schedule=inverse_sqrt", "trainer.warmup_steps=20",
            "task.val_subset=40", "task.beam_size=2", "trainer.log_every=5"]
    assert train.main(run_args(tmp_path, data_root, *tiny)) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("iwslt14").experiment_id])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert {"val/bleu", "val/bleu_tok", "test/bleu", "test/bleu_tok", "test/loss"} <= set(metrics)
    val_loss = [m.value for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert len(val_loss) == 3 and val_loss[-1] < 0.8 * val_loss[0]
    assert run.data.tags["sacrebleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    path = client.download_artifacts(run.info.run_id, "samples/translations_test.tsv", str(tmp_path))
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "source\treference\thypothesis" and len(lines) == SMALL["test_segments"] * 5 + 1
