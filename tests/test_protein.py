"""Protein localization task: SCL2205 from the package, FLIP CSV path, tokens, truncation, batching,
the ESM-2 featurizer offline (tiny random ESM-2), backbone padding invariance, and trainer runs."""
from __future__ import annotations

import csv
import json
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch

import train
from attention import AttentionSpec, list_attentions
from attention.pooling import PoolingSpec
from backbones import build_backbone
from lab.download import DataError
from lab.registry import ConfigError
from tasks.base import ModelSpec
from tasks.esm_features import ESM_LOADERS, EsmFeatureCache, load_pretrained
from tasks.protein import Protein, pad_collate
from tasks.protein_data import (FLIP_SCL_URL, PAD_ID, UNKNOWN_ID, VOCAB_SIZE, clean_sequence, flip_scl_csv,
                                read_flip_csv, scldata_folder, tokenize, truncate)
from tasks.synthetic_protein import write_synthetic_flip_scl


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes: one intra-op thread halves the CPU time on the shared machine (no spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scl2205():
    task = Protein(data_root=Path("unused"), download=False, max_length=32, c_terminal=8)
    task.setup()
    return task


@pytest.fixture(scope="module")
def flip_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("flip")
    Protein.prepare(root, synthetic=True)
    return root


# -- SCL2205 -------------------------------------------------------------------------------------
def test_scl2205_splits_and_stable_labels(scl2205):
    sizes = {split: len(ds) for split, ds in scl2205.datasets().items()}
    assert sizes == {"train": 15183, "val": 1260, "test": 2631}
    assert scl2205.num_classes == 13 and scl2205.class_names[:3] == ["Cytoplasm", "Plastid", "Secreted"]
    # labels equal the integer codes stored in the package's raw CSV, entry by entry (independent of its loader)
    data_dir = scldata_folder()
    with open(data_dir / "scl2205.csv", newline="") as handle:
        raw = {row["entry"]: int(row["scl"]) for row in csv.DictReader(handle)}
    splits = json.loads((data_dir / "splits.json").read_text())
    entries = json.loads((data_dir / "entries.json").read_text())
    for split, key in (("train", "trn"), ("val", "evl"), ("test", "tst")):
        expected = torch.tensor([raw[entries[str(i)]] for i in splits[key]])
        assert torch.equal(scl2205.datasets()[split].labels, expected), split
    assert 0.24 < scl2205.describe()["data.test_majority_rate"] < 0.25  # Nucleus: 648 / 2631
    assert max(len(t) for t in scl2205.datasets()["train"].tokens) == 32


def test_scl2205_without_package_data_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.protein_data.scldata_folder", lambda: tmp_path)
    with pytest.raises(DataError, match="p-scldata==2025.6.0") as error:
        Protein(data_root=tmp_path, download=True).setup()
    assert "\n" not in str(error.value)


# -- tokens, truncation, batches -----------------------------------------------------------------
def test_tokenizer_folds_rare_residues_and_reserves_pad():
    assert VOCAB_SIZE == 22 and PAD_ID == 0
    assert clean_sequence(" mkXbuzoJ\n") == "MKXBUZOX"
    ids = tokenize("ACDEFGHIKLMNPQRSTVWY")
    assert ids.tolist() == list(range(1, 21))
    assert tokenize(clean_sequence("XBUZOJ")).tolist() == [UNKNOWN_ID] * 6
    with pytest.raises(DataError, match="'1'"):
        clean_sequence("MK1A")
    with pytest.raises(DataError):
        clean_sequence("")


def test_truncation_keeps_both_termini():
    sequence = "".join("ACDEFGHIKLMNPQRSTVWY"[i % 20] for i in range(100))
    assert truncate(sequence, 20, 5) == sequence[:15] + sequence[-5:]
    assert truncate(sequence, 20, 0) == sequence[:20]
    assert truncate(sequence[:20], 20, 5) == sequence[:20]
    with pytest.raises(ValueError, match="c_terminal"):
        truncate(sequence, 20, 20)
    with pytest.raises(ValueError, match="c_terminal"):
        Protein(data_root=Path("unused"), download=False, max_length=16, c_terminal=16)


def test_collate_pads_to_the_longest_and_masks():
    items = [{"tokens": torch.tensor([3, 4, 5]), "labels": torch.tensor(1)},
             {"tokens": torch.tensor([6, 7, 8, 9, 10]), "labels": torch.tensor(0)},
             {"tokens": torch.tensor([11]), "labels": torch.tensor(2)}]
    batch = pad_collate(items)
    assert batch["tokens"].tolist() == [[3, 4, 5, 0, 0], [6, 7, 8, 9, 10], [11, 0, 0, 0, 0]]
    assert batch["padding_mask"].tolist() == [[False] * 3 + [True] * 2, [False] * 5, [False] + [True] * 4]
    assert batch["labels"].tolist() == [1, 0, 2]
    features = [{"features": torch.ones(n, 4, dtype=torch.float16), "labels": torch.tensor(0)} for n in (2, 4)]
    batch = pad_collate(features)
    assert batch["features"].dtype == torch.float32 and batch["features"].shape == (2, 4, 4)
    assert batch["features"][0, 2:].abs().sum() == 0 and batch["padding_mask"][0].tolist() == [False, False, True, True]


# -- FLIP scl ------------------------------------------------------------------------------------
def test_flip_csv_splits_and_first_appearance_labels(flip_root):
    path = flip_scl_csv(flip_root)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    train_rows = [r for r in rows if r["set"] == "train" and r["validation"] == "False"]
    expected_classes = list(dict.fromkeys(r["target"] for r in train_rows))
    task = Protein(data_root=flip_root, download=False, dataset="flip_scl", max_length=64, c_terminal=16)
    task.setup()
    assert task.class_names == expected_classes and task.num_classes == 10
    assert {s: len(d) for s, d in task.datasets().items()} == {"train": 600, "val": 100, "test": 200}
    first = train_rows[0]
    assert task.datasets()["train"].labels[0] == expected_classes.index(first["target"])
    expected_tokens = torch.from_numpy(tokenize(truncate(first["sequence"], 64, 16)))
    assert torch.equal(task.datasets()["train"].tokens[0], expected_tokens)


def test_flip_unseen_label_is_an_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("sequence,target,set,validation\n"
                    "MKV,Nucleus,train,False\nMKW,Nucleus,train,True\nMKA,Plastid,test,\n")
    with pytest.raises(DataError, match="Plastid"):
        read_flip_csv(path)


def test_flip_archive_is_extracted_and_offline_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="splits.zip") as missing:
        Protein(data_root=tmp_path, download=False, dataset="flip_scl").setup()
    assert FLIP_SCL_URL in str(missing.value) and "\n" not in str(missing.value)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError, match="could not download") as failed:
        Protein(data_root=tmp_path, download=True, dataset="flip_scl").setup()
    assert "\n" not in str(failed.value)
    source = write_synthetic_flip_scl(tmp_path / "src.csv", train_per_class=2, val_per_class=1, test_per_class=1)
    with zipfile.ZipFile(tmp_path / "flip_scl" / "splits.zip", "w") as archive:
        archive.write(source, "splits/balanced.csv")
    task = Protein(data_root=tmp_path, download=False, dataset="flip_scl")
    task.setup()
    assert len(task.datasets()["test"]) == 10


def test_prepare_cli_forwards_task_options(tmp_path, capsys):
    """`python -m tasks.prepare protein --option dataset=flip_scl` fetches FLIP (here: extracts a local
    archive); unknown option keys exit 2 naming the valid ones."""
    from tasks.prepare import main as prepare

    assert prepare(["protein", "--root", str(tmp_path), "--no-download", "--option", "dataset=flip_scl"]) == 2
    assert "splits.zip" in capsys.readouterr().err
    source = write_synthetic_flip_scl(tmp_path / "src.csv", train_per_class=2, val_per_class=1, test_per_class=1)
    (tmp_path / "flip_scl").mkdir()
    with zipfile.ZipFile(tmp_path / "flip_scl" / "splits.zip", "w") as archive:
        archive.write(source, "splits/balanced.csv")
    assert prepare(["protein", "--root", str(tmp_path), "--no-download", "--option", "dataset=flip_scl"]) == 0
    assert flip_scl_csv(tmp_path).is_file()
    assert prepare(["protein", "--root", str(tmp_path), "--option", "datset=flip_scl"]) == 2
    error = capsys.readouterr().err.strip()
    assert "valid options: dataset" in error and "\n" not in error
    assert prepare(["modelnet40", "--root", str(tmp_path), "--option", "dataset=x"]) == 2
    assert "valid options: none" in capsys.readouterr().err
    assert prepare(["cifar10", "--root", str(tmp_path), "--option", "dataset=x"]) == 2
    assert "valid options: stand_in" in capsys.readouterr().err


# -- ESM-2 featurizer, offline with a tiny random ESM-2 -------------------------------------------
@pytest.fixture
def tiny_esm(monkeypatch):
    import esm

    torch.manual_seed(0)
    model = esm.ESM2(num_layers=2, embed_dim=32, attention_heads=2, alphabet="ESM-1b").eval()
    calls = {"load": 0, "forward": 0}
    forward = model.forward

    def counting_forward(*args, **kwargs):
        calls["forward"] += 1
        return forward(*args, **kwargs)

    def loader(download):
        calls["load"] += 1
        return model, model.alphabet

    model.forward = counting_forward
    monkeypatch.setitem(ESM_LOADERS, "esm2_t6_8M", loader)
    return model, calls


@torch.no_grad()
def esm_alone(model, sequence: str) -> torch.Tensor:
    """Reference: the sequence alone, tokenised by hand as <cls> residues <eos>; rows of the residues."""
    alphabet = model.alphabet
    tokens = torch.tensor([[alphabet.cls_idx, *(alphabet.get_idx(c) for c in sequence), alphabet.eos_idx]])
    return type(model).forward(model, tokens, repr_layers=[2])["representations"][2][0, 1:-1]


def test_esm_strips_bos_eos_per_sequence_independent_of_batch(tiny_esm, tmp_path):
    model, _ = tiny_esm
    cache = EsmFeatureCache("esm2_t6_8M", tmp_path)
    sequences = ["MKT", "MKTAYIAKQRQISFVKSHFSRQ", "AC", "MKXBUZO"]
    batch = cache.embed(sequences)
    assert [tuple(f.shape) for f in batch] == [(3, 32), (22, 32), (2, 32), (7, 32)]
    for sequence, features in zip(sequences, batch):
        torch.testing.assert_close(features, esm_alone(model, sequence), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cache.embed([sequence])[0], features, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="1022"):
        cache.embed(["A" * 1023])


def test_esm_cache_hits_truncation_and_atomic_files(tiny_esm, tmp_path):
    model, calls = tiny_esm
    write_synthetic_flip_scl(flip_scl_csv(tmp_path), train_per_class=3, val_per_class=1, test_per_class=1)
    options = dict(data_root=tmp_path, download=False, dataset="flip_scl", featurizer="esm2_t6_8M",
                   max_length=40, c_terminal=8)
    task = Protein(**options)
    task.setup()
    assert calls["load"] == 1 and calls["forward"] > 0 and task.feature_dim == 32
    files = list((tmp_path / "protein_features" / "esm2_t6_8M").rglob("*"))
    assert not [f for f in files if f.name.endswith(".part")]
    assert len([f for f in files if f.suffix == ".pt"]) == 50
    sequences = read_flip_csv(flip_scl_csv(tmp_path)).sequences["train"]
    long_one = max(sequences, key=len)
    index = sequences.index(long_one)
    item = task.datasets()["train"][index]
    assert item["features"].dtype == torch.float16 and item["features"].shape == (40, 32)
    reference = esm_alone(model, long_one[:32] + long_one[-8:])
    assert len(long_one) > 40
    torch.testing.assert_close(item["features"].float(), reference, atol=2e-3, rtol=1e-3)  # float16 on disk

    forward_calls = calls["forward"]
    again = Protein(**options)
    again.setup()  # everything cached: neither the weights nor the model are needed
    assert calls == {"load": 1, "forward": forward_calls}
    assert torch.equal(again.datasets()["train"][index]["features"], item["features"])
    with pytest.raises(ConfigError, match="model=set_pooler"):
        again.build_model(ModelSpec("sequence_encoder"), AttentionSpec("softmax"), PoolingSpec("mean"))
    with pytest.raises(ValueError, match="1022"):
        Protein(**{**options, "max_length": 2000})


def test_esm_weights_missing_offline_is_one_line(tmp_path, monkeypatch):
    import esm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(DataError) as error:
        load_pretrained("esm2_t6_8M_UR50D", download=False)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "models/esm2_t6_8M_UR50D.pt" in message and "regression/esm2_t6_8M_UR50D-contact-regression.pt" in message

    def offline():
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(esm.pretrained, "esm2_t6_8M_UR50D", offline)
    with pytest.raises(DataError, match="no network"):
        ESM_LOADERS["esm2_t6_8M"](True)


# -- backbones: padding never changes the logits ---------------------------------------------------
@pytest.mark.parametrize("attention", list_attentions())
@pytest.mark.parametrize("pooling", ["mean", "max", "cls"])
def test_sequence_encoder_ignores_padding(attention, pooling):
    model = build_backbone("sequence_encoder", num_classes=5, vocab_size=VOCAB_SIZE, max_length=16,
                           attention=AttentionSpec(attention), pooling=PoolingSpec(pooling), dim=16, depth=2,
                           num_heads=2).eval()
    tokens = torch.randint(1, VOCAB_SIZE, (3, 8))
    mask = torch.tensor([[False] * 8, [False] * 5 + [True] * 3, [False] * 2 + [True] * 6])
    junk = torch.randint(1, VOCAB_SIZE, (3, 6))
    padded_tokens = torch.cat([tokens, junk], dim=1)
    padded_mask = torch.cat([mask, torch.ones(3, 6, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded_tokens, padded_mask), model(tokens, mask), atol=1e-5, rtol=1e-4)
        alone = model(tokens[1:2, :5], mask[1:2, :5])
        torch.testing.assert_close(model(tokens, mask)[1:2], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("options", [{}, {"dim": 16, "depth": 1, "num_heads": 2}])
def test_set_pooler_ignores_padding(options):
    model = build_backbone("set_pooler", num_classes=4, input_dim=12, attention=AttentionSpec("softmax"),
                           pooling=PoolingSpec(None), **options).eval()
    features = torch.randn(2, 7, 12)
    mask = torch.tensor([[False] * 7, [False] * 3 + [True] * 4])
    padded = torch.cat([features, 100 * torch.randn(2, 5, 12)], dim=1)
    padded_mask = torch.cat([mask, torch.ones(2, 5, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, padded_mask), model(features, mask), atol=1e-5, rtol=1e-4)
    if not options:  # no projection, no blocks: the masked mean through the head
        expected = model.head(features[1, :3].mean(0, keepdim=True))
        torch.testing.assert_close(model(features, mask)[1:2], expected)


# -- through the trainer ---------------------------------------------------------------------------
def run_args(tmp: Path, data_root: Path, *extra: str) -> list[str]:
    return ["task=protein", "attention=softmax", "model.dim=32", "model.depth=1", "model.num_heads=2",
            "tracking.system_metrics=false", f"data.root={data_root}", "data.download=false",
            f"output_dir={tmp}/runs", f"tracking.uri=sqlite:///{tmp}/mlflow.db", *extra]


def finished_run(tmp: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("protein").experiment_id])
    assert run.info.status == "FINISHED"
    return run


def test_learns_synthetic_flip_data_through_the_trainer(tmp_path, flip_root):
    code = train.main(run_args(tmp_path, flip_root, "task.dataset=flip_scl", "task.max_length=48",
                               "task.c_terminal=16", "trainer.epochs=3", "trainer.lr=3e-3"))
    assert code == 0
    run = finished_run(tmp_path)
    metrics, params = run.data.metrics, run.data.params
    assert params["data.num_classes"] == "10" and float(params["data.test_majority_rate"]) == pytest.approx(0.1)
    assert metrics["test/accuracy"] > 0.6, "motifs decide the class: far above the 10% majority rate"
    assert metrics["test/macro_f1"] > 0.5


def test_scl2205_smoke_through_the_trainer(tmp_path):
    code = train.main(run_args(tmp_path, tmp_path / "data", "task.train_subset=256", "task.max_length=16",
                               "task.c_terminal=4", "trainer.epochs=1", "trainer.batch_size=256"))
    assert code == 0
    run = finished_run(tmp_path)
    assert run.data.params["data.train_size"] == "256" and run.data.params["data.test_size"] == "2631"
    assert 0.0 <= run.data.metrics["test/accuracy"] <= 1.0 and "test/macro_f1" in run.data.metrics


def test_esm_experiment_composes():
    from train import load_config

    cfg = load_config(["experiment=protein_esm"])
    assert cfg.task.name == "protein" and cfg.model.name == "set_pooler" and cfg.model.options["depth"] == 0
    assert cfg.task.options["featurizer"] == "esm2_t6_8M" and cfg.task.options["max_length"] == 1022


def test_esm_featurizer_through_the_trainer(tiny_esm, tmp_path):
    write_synthetic_flip_scl(flip_scl_csv(tmp_path / "data"), train_per_class=4, val_per_class=1, test_per_class=2)
    code = train.main(run_args(tmp_path, tmp_path / "data", "experiment=protein_esm", "task.dataset=flip_scl",
                               "task.max_length=64", "trainer.epochs=1", "trainer.batch_size=16"))
    assert code == 0
    run = finished_run(tmp_path)
    assert run.data.params["model.name"] == "set_pooler" and run.data.params["task.featurizer"] == "esm2_t6_8M"
    assert "test/accuracy" in run.data.metrics
