"""IMDB: the aclImdb layout (train/unsup ignored), the archive path, markup cleaning, the stratified split,
the cached SentencePiece model, head + tail truncation, and a learning run through the trainer."""
from __future__ import annotations

import re
import tarfile

import pytest
import torch

import train
from lab.data import stratified_split
from lab.download import DataError, file_digest
from lab.registry import ConfigError
from tasks.imdb import Imdb, head_and_tail
from tasks.imdb_data import read_reviews
from tasks.synthetic_imdb import NEGATIONS, NEGATIVE, POSITIVE, review, write_synthetic_aclimdb

UNSUP_MARKER = "zzunlabelledzz"


@pytest.fixture(scope="module")
def imdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imdb")
    folder = write_synthetic_aclimdb(root, train_per_class=40, test_per_class=10, unsupervised=5)
    (folder / "train" / "unsup" / "5_0.txt").write_text(f"an unlabelled review {UNSUP_MARKER}")
    return root


def test_synthetic_layout_is_the_archives(imdb_root):
    folder = imdb_root / "aclImdb"
    assert sorted(p.name for p in folder.iterdir()) == ["README", "imdb.vocab", "test", "train"]
    assert sorted(p.name for p in (folder / "train").iterdir()) == ["neg", "pos", "unsup"]
    for split, count in (("train", 40), ("test", 10)):
        for name, ratings in (("pos", range(7, 11)), ("neg", range(1, 5))):
            files = list((folder / split / name).iterdir())
            assert len(files) == count
            for path in files:
                match = re.fullmatch(r"(\d+)_(\d+)\.txt", path.name)
                assert match and int(match.group(2)) in ratings
                assert "\n" not in path.read_text()
    assert all(p.name.endswith("_0.txt") for p in (folder / "train" / "unsup").iterdir())
    assert "brilliant" in (folder / "imdb.vocab").read_text().split()


def test_review_label_needs_the_negations():
    """Reading each negation with the word after it gives every label; counting sentiment words alone
    gets a good share wrong."""
    import numpy as np

    rng = np.random.default_rng(1)
    naive_wrong = 0
    for index in range(400):
        label = index % 2
        words = review(label, rng).lower().rstrip(".").split()
        polarity = [(w in POSITIVE) - (w in NEGATIVE) for w in words]
        read = sum(-p if i and words[i - 1] in NEGATIONS else p for i, p in enumerate(polarity))
        assert (read > 0) == bool(label)
        naive_wrong += (sum(polarity) > 0) != bool(label)
    assert 0.05 < naive_wrong / 400 < 0.3


def test_reader_ignores_unsup_and_cleans_markup(imdb_root):
    texts, labels = read_reviews(imdb_root, "train")
    assert len(texts) == 80 and labels == [0] * 40 + [1] * 40
    assert not any(UNSUP_MARKER in text for text in texts)
    assert not any("<br" in text for text in texts)
    raw, _ = read_reviews(imdb_root, "train", clean=False)
    assert any("<br /><br />" in text for text in raw)


def test_split_sentencepiece_cache_and_truncation(imdb_root, capsys):
    task = Imdb(data_root=imdb_root, download=False, vocab_size=300, max_length=24, tail_length=8)
    task.setup()
    assert "training a SentencePiece" in capsys.readouterr().out
    sizes = {split: len(d) for split, d in task.datasets().items()}
    assert sizes == {"train": 72, "val": 8, "test": 20}
    assert task.datasets()["val"].labels.tolist().count(1) == 4  # stratified: 10% of each class
    assert max(len(t) for t in task.datasets()["train"].tokens) == 24 and task.vocab_size <= 300
    models = list((imdb_root / "imdb_spm").glob("*.model"))
    stamp = models[0].stat().st_mtime_ns
    again = Imdb(data_root=imdb_root, download=False, vocab_size=300, max_length=24, tail_length=8)
    again.setup()
    out = capsys.readouterr().out
    assert "training" not in out and "using the cached SentencePiece model" in out
    assert models[0].stat().st_mtime_ns == stamp  # reused
    assert torch.equal(again.datasets()["test"].tokens[3], task.datasets()["test"].tokens[3])
    Imdb(data_root=imdb_root, download=False, vocab_size=250).setup()  # another option: another model
    assert len(list((imdb_root / "imdb_spm").glob("*.model"))) == 2


def test_head_and_tail_truncation_and_split_helpers():
    ids = list(range(10))
    assert head_and_tail(ids, 6, 2) == [0, 1, 2, 3, 8, 9]
    assert head_and_tail(ids, 6, 0) == [0, 1, 2, 3, 4, 5]
    assert head_and_tail(ids[:4], 6, 2) == [0, 1, 2, 3]
    labels = torch.tensor([0] * 30 + [1] * 10)
    kept, held = stratified_split(labels, 0.2, seed=0)
    assert labels[held].tolist().count(0) == 6 and labels[held].tolist().count(1) == 2
    assert sorted(kept.tolist() + held.tolist()) == list(range(40))
    assert torch.equal(stratified_split(labels, 0.2, seed=0)[1], held)
    with pytest.raises(ConfigError, match="tail_length"):
        Imdb(data_root="unused", download=False, max_length=8, tail_length=8)


def test_archive_is_verified_and_only_labelled_reviews_extracted(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_synthetic_aclimdb(source, train_per_class=3, test_per_class=2, unsupervised=4)
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "aclImdb_v1.tar.gz", "w:gz") as archive:
        archive.add(source / "aclImdb", "aclImdb")
    with pytest.raises(DataError, match="corrupt"):
        Imdb.prepare(root, download=False)  # the real archive's md5 does not match the stand-in
    monkeypatch.setattr("tasks.imdb_data.MD5", file_digest(root / "aclImdb_v1.tar.gz"))
    Imdb.prepare(root, download=False)
    assert sorted(p.name for p in (root / "aclImdb" / "train").iterdir()) == ["neg", "pos"]  # no unsup
    assert len(read_reviews(root, "test")[0]) == 4


def test_missing_data_offline_is_one_line(tmp_path):
    with pytest.raises(DataError) as error:
        Imdb(data_root=tmp_path, download=False).setup()
    assert "\n" not in str(error.value) and "aclImdb_v1.tar.gz" in str(error.value)


def test_learns_synthetic_reviews_through_the_trainer(tmp_path):
    from mlflow.tracking import MlflowClient

    root = tmp_path / "data"
    write_synthetic_aclimdb(root, train_per_class=300, test_per_class=100, unsupervised=0, words=(20, 60))
    code = train.main(["task=imdb", "attention=softmax", f"data.root={root}", "data.download=false",
                       "task.vocab_size=400", "model.dim=32", "trainer.epochs=6", "trainer.lr=3e-3",
                       f"output_dir={tmp_path}/runs", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                       "tracking.system_metrics=false"])
    assert code == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("imdb").experiment_id])
    assert run.data.params["data.test_majority_rate"] == "0.5"
    assert run.data.metrics["test/accuracy"] > 0.7
