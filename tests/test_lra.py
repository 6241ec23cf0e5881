"""Long Range Arena tasks on stand-ins in the release's layout: text bytes, AAN pairs and the two-tower
backbone, grayscale CIFAR, Pathfinder images and metadata, extracting only a task's folder from the
release archive, and the presets."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from attention import AttentionSpec, list_attentions
from attention.pooling import PoolingSpec
from backbones import build_backbone
from lab.download import DataError
from lab.registry import ConfigError
from tasks.base import ModelSpec
from tasks.cifar import Cifar10
from tasks.lra import LraImage, LraPathfinder, LraRetrieval, LraText, byte_tokens, grayscale
from tasks.lra_release import URL, find_folder
from tasks.synthetic_aan import write_synthetic_aan
from tasks.synthetic_cifar import write_synthetic_cifar
from tasks.synthetic_imdb import write_synthetic_aclimdb
from tasks.synthetic_pathfinder import write_synthetic_pathfinder

PATHFINDER = Path("lra_release") / "pathfinder32" / "curv_contour_length_14"


# -- lra_text --------------------------------------------------------------------------------------
def test_text_is_raw_bytes_and_test_doubles_as_validation(tmp_path):
    folder = write_synthetic_aclimdb(tmp_path, train_per_class=3, test_per_class=2, unsupervised=2)
    (review,) = (folder / "train" / "pos").glob("0_*.txt")
    review.write_text("Café <br /><br />great")
    task = LraText(data_root=tmp_path, download=False, max_length=9)
    task.setup()
    assert task.datasets()["val"] is task.datasets()["test"] and len(task.datasets()["train"]) == 6
    positive = task.datasets()["train"][3]  # neg first, then pos in file-id order
    assert positive["labels"] == 1
    assert positive["tokens"].tolist() == [b + 1 for b in "Café <br".encode()]  # UTF-8 bytes + 1, markup kept
    assert byte_tokens(b"\x00\xff", 10).tolist() == [1, 256] and LraText.vocab_size == 257


# -- lra_retrieval -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aan_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("aan")
    write_synthetic_aan(root / "lra_release" / "lra_release" / "tsv_data", sizes=(60, 10, 10))
    return root


def test_aan_layout_and_pairs(aan_root):
    folder = find_folder(aan_root, "tsv_data")
    assert sorted(p.name for p in folder.iterdir()) == [f"new_aan_pairs.{s}.tsv" for s in ("eval", "test", "train")]
    first = (folder / "new_aan_pairs.train.tsv").read_text().splitlines()[0].split("\t")
    assert len(first) == 5 and first[0] in ("0.0", "1.0")
    task = LraRetrieval(data_root=aan_root, download=False, max_length=100)
    task.setup()
    train = task.datasets()["train"]
    assert len(train) == 60 and train.labels.float().mean() == 0.5
    item = train[0]
    assert bytes((item["tokens"] - 1).tolist()) == first[3].encode()[:100] or item["labels"] in (0, 1)
    assert max(len(d) for d in train.documents) == 100
    batch = task.collate([train[i] for i in range(4)])
    assert set(batch) == {"tokens", "padding_mask", "tokens_2", "padding_mask_2", "labels"}
    model = task.build_model(ModelSpec("dual_encoder", {"dim": 16, "depth": 1, "num_heads": 2}),
                             AttentionSpec("luna"), PoolingSpec(None))
    assert model(**{k: v for k, v in batch.items() if k != "labels"}).shape == (4, 2)
    with pytest.raises(ConfigError, match="model=dual_encoder"):
        task.build_model(ModelSpec("sequence_encoder"), AttentionSpec("softmax"), PoolingSpec(None))


def test_aan_label_depends_on_both_documents(tmp_path):
    """Every topic is as often in a positive as in a negative pair: one document alone says nothing."""
    from tasks.synthetic_aan import topic_terms

    write_synthetic_aan(tmp_path, sizes=(800, 0, 0), topics=4, seed=5)
    terms = topic_terms(4, 3, np.random.default_rng(5))
    topic_of = {term: topic for topic, group in enumerate(terms) for term in group}
    counts = np.zeros((4, 2))
    for line in (tmp_path / "new_aan_pairs.train.tsv").read_text().splitlines():
        label, _, _, text1, text2 = line.split("\t")
        topics = [{topic_of[w] for w in text.split() if w in topic_of} for text in (text1, text2)]
        assert all(len(t) == 1 for t in topics)
        assert (topics[0] == topics[1]) == (label == "1.0")
        counts[topics[0].pop(), int(float(label))] += 1
    positive_rate = counts[:, 1] / counts.sum(1)
    assert np.all(np.abs(positive_rate - 0.5) < 0.1)


@pytest.mark.parametrize("attention", list_attentions())
def test_dual_encoder_ignores_padding(attention):
    """A batch padded to its longest members gives each pair the logits it gets alone."""
    model = build_backbone("dual_encoder", num_classes=2, vocab_size=20, max_length=16,
                           attention=AttentionSpec(attention), pooling=PoolingSpec("mean"), dim=16, depth=2,
                           num_heads=2, head_hidden=8).eval()
    lengths = [(5, 9), (9, 3)]
    pairs = [(torch.randint(1, 20, (a,)), torch.randint(1, 20, (b,))) for a, b in lengths]
    tokens = torch.zeros(2, 9, dtype=torch.long)
    tokens_2 = torch.zeros(2, 9, dtype=torch.long)
    for i, (a, b) in enumerate(pairs):
        tokens[i, :len(a)], tokens_2[i, :len(b)] = a, b
    mask = torch.arange(9)[None] >= torch.tensor([5, 9])[:, None]
    mask_2 = torch.arange(9)[None] >= torch.tensor([9, 3])[:, None]
    with torch.no_grad():
        batched = model(tokens, mask, tokens_2=tokens_2, padding_mask_2=mask_2)
        for i, (a, b) in enumerate(pairs):
            alone = model(a[None], None, tokens_2=b[None], padding_mask_2=None)
            torch.testing.assert_close(batched[i:i + 1], alone, atol=1e-5, rtol=1e-4)


# -- lra_image ---------------------------------------------------------------------------------------
def test_grayscale_matches_tensorflows_formula():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    rgb = images.double().numpy() / 255.0
    expected = np.floor((0.2989 * rgb[:, 0] + 0.5870 * rgb[:, 1] + 0.1140 * rgb[:, 2]) * 255.5).reshape(4, -1)
    difference = np.abs(grayscale(images).numpy().astype(float) - expected)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99  # float32 vs float64 at the floor's edges
    assert grayscale(torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)).unique().tolist() == [255]  # 0.9999 * 255.5


def test_image_reuses_the_cifar_data_and_split(tmp_path):
    write_synthetic_cifar(tmp_path / Cifar10.folder, Cifar10, train_per_class=10, test_per_class=3)
    task = LraImage(data_root=tmp_path, download=False)
    task.setup()
    cifar = Cifar10(data_root=tmp_path, download=False, augment=False)
    cifar.setup()
    assert {s: len(d) for s, d in task.datasets().items()} == {"train": 90, "val": 10, "test": 30}
    for split in ("train", "val", "test"):
        tokens = torch.stack(list(task.datasets()[split].tokens))
        assert tokens.shape[1] == 1024 and tokens.dtype == torch.uint8
        assert torch.equal(tokens, grayscale(cifar.datasets()[split].images))
        assert torch.equal(task.datasets()[split].labels, cifar.datasets()[split].labels)
    assert task.class_names == cifar.class_names and task.describe()["data.num_classes"] == 10


# -- lra_pathfinder ----------------------------------------------------------------------------------
def best_threshold_accuracy(values: np.ndarray, labels: np.ndarray) -> float:
    """The best accuracy one threshold on `values` reaches on `labels` (either direction)."""
    above = [(values > t) == labels for t in np.unique(values)]
    return max(max(hits.mean(), 1 - hits.mean()) for hits in above)


def dot_corners(pixels: np.ndarray) -> np.ndarray:
    """(dots, 2): each dot's top-left pixel, the curve end it marks (a dot clipped at the border loses its
    bottom or right half only)."""
    spots, _ = ndimage.label(pixels == 255)
    return np.array([(rows.start, cols.start) for rows, cols in ndimage.find_objects(spots)])


@pytest.mark.parametrize("shape", [{}, {"curve_length": 10, "min_separation": 6, "max_separation": 8,
                                        "distractors": 1}], ids=["default", "short"])
def test_pathfinder_images_join_the_dots_only_when_labelled_so(tmp_path, shape):
    """In positives the two dots lie on one curve (joined through its 1-pixel dash gaps); in negatives they
    rarely are (only where two curves pass within two pixels of each other). Nothing simpler than following
    a curve gives the label away: the two classes have the same ink, the same dot distances (images come in
    pairs with equal squared distances) and the same spread of ink; one threshold on any of these is near
    chance (the generator before pairing reached 0.65 from the dots' distance alone, 0.80 on short curves)."""
    from tasks.pathfinder import read_images

    pixels, labels = read_images(write_synthetic_pathfinder(tmp_path / PATHFINDER, count=400, **shape))
    pixels = pixels.reshape(-1, 32, 32)
    assert set(np.unique(pixels)) <= {0, 190, 255} and labels.sum() == 200
    joined = {0: 0, 1: 0}
    distance2, ink, spread = [], [], []
    for image, label in zip(pixels, labels):
        dots = np.argwhere(image == 255)
        bridged = ndimage.binary_dilation(image > 0, structure=np.ones((2, 2)))
        components, _ = ndimage.label(bridged, structure=np.ones((3, 3)))
        joined[label] += len({components[y, x] for y, x in dots}) == 1
        corners = dot_corners(image)
        assert len(corners) == 2
        distance2.append(np.square(corners[0] - corners[1]).sum())
        ink.append(np.count_nonzero(image))
        spread.append(np.argwhere(image > 0).std(axis=0).sum())
    assert joined[1] == 200 and joined[0] < 60
    distance2 = np.array(distance2)
    assert sorted(distance2[labels == 1]) == sorted(distance2[labels == 0])
    for feature in (distance2, np.array(ink), np.array(spread)):
        assert best_threshold_accuracy(feature, labels) < 0.6


def test_pathfinder_layout_reader_cache_and_split(tmp_path):
    folder = write_synthetic_pathfinder(tmp_path / PATHFINDER, count=40, per_batch=15)
    assert sorted(p.name for p in (folder / "metadata").iterdir()) == ["0.npy", "1.npy", "2.npy"]
    line = (folder / "metadata" / "1.npy").read_text().splitlines()[0].split(" ")
    assert line[:3] == ["imgs/1", "sample_15.png", "15"] and line[3] in ("0", "1")
    (folder / "imgs" / "1" / "sample_15.png").write_bytes(b"")  # the release has a few empty images: skipped
    task = LraPathfinder(data_root=tmp_path, download=False)
    task.setup()
    sizes = {s: len(d) for s, d in task.datasets().items()}
    assert sizes == {"train": 31, "val": 4, "test": 4}
    cache = folder.with_name("curv_contour_length_14.npz")
    stamp = cache.stat().st_mtime_ns
    again = LraPathfinder(data_root=tmp_path, download=False)
    again.setup()
    assert cache.stat().st_mtime_ns == stamp  # decoded once
    assert torch.equal(again.datasets()["test"].labels, task.datasets()["test"].labels)
    from PIL import Image

    labels = {}
    for meta in sorted((folder / "metadata").iterdir()):
        for entry in meta.read_text().splitlines():
            directory, name, _, label = entry.split(" ")[:4]
            if (folder / directory / name).stat().st_size:
                labels[np.asarray(Image.open(folder / directory / name)).tobytes()] = int(label)
    for split in ("train", "val", "test"):
        for item in (task.datasets()[split][i] for i in range(len(task.datasets()[split]))):
            assert labels[item["tokens"].numpy().tobytes()] == item["labels"]


# -- the release archive -------------------------------------------------------------------------------
def test_only_the_needed_folder_is_extracted_from_the_release(tmp_path):
    source = tmp_path / "source"
    release = source / "lra_release" / "lra_release"
    write_synthetic_aan(release / "tsv_data", sizes=(8, 2, 2))
    write_synthetic_pathfinder(release / "pathfinder32" / "curv_contour_length_14", count=10)
    write_synthetic_pathfinder(release / "pathfinder32" / "curv_baseline", count=4)
    (release / "listops-1000").mkdir()
    (release / "listops-1000" / "basic_train.tsv").write_text("Source\tTarget\n")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "lra_release.gz", "w:gz") as archive:
        archive.add(source / "lra_release", "lra_release")
    LraPathfinder.prepare(root, download=False)
    LraRetrieval.prepare(root, download=False)
    extracted = root / "lra_release" / "lra_release"
    assert sorted(p.name for p in extracted.iterdir()) == ["pathfinder32", "tsv_data"]
    assert [p.name for p in (extracted / "pathfinder32").iterdir()] == ["curv_contour_length_14"]
    task = LraPathfinder(data_root=root, download=False)
    task.setup()
    assert sum(len(d) for d in task.datasets().values()) == 10


def test_missing_release_offline_is_one_line(tmp_path):
    with pytest.raises(DataError) as error:
        LraRetrieval(data_root=tmp_path, download=False).setup()
    message = str(error.value)
    assert "\n" not in message and URL in message and "lra_release.gz" in message


def test_corrupt_release_is_reported(tmp_path):
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as archive:
        info = tarfile.TarInfo("lra_release/tsv_data/new_aan_pairs.train.tsv")
        info.size = 4000
        archive.addfile(info, io.BytesIO(b"1.0\ta\tb\tx\ty\n" * 400))
    (tmp_path / "lra_release.gz").write_bytes(payload.getvalue()[:-60])
    with pytest.raises(DataError, match="is corrupt"):
        LraRetrieval.prepare(tmp_path, download=False)


# -- presets -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["listops", "text", "retrieval", "image", "pathfinder"])
def test_presets_compose(task):
    from train import load_config

    harness = load_config([f"experiment=lra_{task}", "attention=luna"])
    assert (harness.model.options["dim"], harness.model.options["depth"], harness.model.options["num_heads"],
            harness.model.options["mlp_ratio"], harness.model.options["head_hidden"]) == (64, 2, 2, 2.0, 128)
    assert harness.pooling.name == "mean" and harness.model.options["dropout"] == 0.1
    lotformer = load_config([f"experiment=lra_{task}_lotformer"])
    assert lotformer.attention.name == "lotformer" and lotformer.attention.options["learn_masses"] is False
    cpu = load_config([f"experiment=lra_{task}_cpu", "attention=esp"])
    assert cpu.task.options["train_subset"] > 0 and cpu.model.options["dropout"] == 0.0


# -- short learning runs through the trainer -------------------------------------------------------------
def finished_run(tmp: Path, task: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name(task).experiment_id])
    assert run.info.status == "FINISHED"
    return run


def train_small(tmp: Path, task: str, root: Path, *overrides: str):
    import train

    code = train.main([f"task={task}", f"data.root={root}", "data.download=false", "model.dim=32",
                       "model.head_hidden=64", f"output_dir={tmp}/runs", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                       "tracking.system_metrics=false", *overrides])
    assert code == 0
    return finished_run(tmp, task)


def test_listops_learns_above_the_majority_class(tmp_path):
    from tasks.listops import ListOpsSetting, write_generated

    setting = ListOpsSetting(max_depth=3, max_args=4, min_length=4, max_length=30, sizes=(1500, 200, 300))
    write_generated(tmp_path / "data" / "lra_release" / "listops-1000", setting)
    run = train_small(tmp_path, "lra_listops", tmp_path / "data", "attention=softmax", "task.max_length=30",
                      "trainer.epochs=6", "trainer.lr=3e-3")
    majority = float(run.data.params["data.test_majority_rate"])
    assert majority < 0.2 and run.data.metrics["test/accuracy"] > majority + 0.15


def test_image_learns_above_chance(tmp_path):
    # real handwritten digits in the CIFAR-10 layout: the glyph stand-in (issue 16) is built to take a ViT
    # hundreds of steps, more than a pixel-level model gets here
    LraImage.prepare(tmp_path, synthetic=True, stand_in="digits")
    run = train_small(tmp_path, "lra_image", tmp_path, "attention=linear", "model.dim=16", "trainer.epochs=3",
                      "trainer.lr=3e-3")
    assert run.data.metrics["test/accuracy"] > 0.2  # 10 classes


def test_text_bytes_learn_above_chance(tmp_path):
    write_synthetic_aclimdb(tmp_path, train_per_class=500, test_per_class=100, unsupervised=0, words=(3, 10))
    run = train_small(tmp_path, "lra_text", tmp_path, "attention=softmax", "task.max_length=200",
                      "trainer.epochs=6", "trainer.lr=3e-3")
    assert run.data.params["data.val_size"] == run.data.params["data.test_size"] == "200"
    assert run.data.params["data.val_split"] == "test"
    assert run.data.metrics["test/accuracy"] > 0.58


def test_retrieval_learns_the_relation_between_two_documents(tmp_path):
    write_synthetic_aan(tmp_path / "lra_release" / "tsv_data", sizes=(1500, 100, 300), words=(10, 25))
    run = train_small(tmp_path, "lra_retrieval", tmp_path, "attention=softmax", "task.max_length=200",
                      "trainer.epochs=2", "trainer.batch_size=16", "trainer.lr=2e-3")
    assert run.data.metrics["test/accuracy"] > 0.75  # one document alone gives 50%


def test_pathfinder_runs_through_the_trainer(tmp_path):
    """The reader, 1,024-token batches, training and the logged metrics; not a learning run: the harness
    model stays at chance on the stand-in at the LRA setting on a CPU (README, Long Range Arena)."""
    write_synthetic_pathfinder(tmp_path / PATHFINDER, count=40)
    run = train_small(tmp_path, "lra_pathfinder", tmp_path, "attention=linear", "model.dim=16", "trainer.epochs=1",
                      "trainer.batch_size=8")
    assert run.data.params["data.train_size"] == "32" and run.data.params["data.test_size"] == "4"
    assert 0 <= run.data.metrics["test/accuracy"] <= 1 and "val/accuracy" in run.data.metrics


def test_pathfinder_cpu_preset_runs_on_its_stand_in(tmp_path):
    """The CPU preset's path: 256 max-pooled pixels, grid positions, max pooling. Learning takes the preset's
    3,000 steps on 10,000 images (README, Long Range Arena), not a test's budget."""
    LraPathfinder.prepare(tmp_path, synthetic=True, count=40)
    run = train_small(tmp_path, "lra_pathfinder", tmp_path, "experiment=lra_pathfinder_cpu", "attention=linear",
                      "model.dim=16", "trainer.epochs=1", "trainer.batch_size=8")
    assert run.data.params["task.downsample"] == "2" and run.data.params["model.position_init"] == "grid_sincos"
    assert run.data.params["data.train_size"] == "32"
    assert 0 <= run.data.metrics["test/accuracy"] <= 1


def test_pathfinder_stand_in_follows_the_difficulty_asked(tmp_path):
    for difficulty, fields in (("curv_baseline", ["10", "1"]), ("curv_contour_length_14", ["18", "2"])):
        LraPathfinder.prepare(tmp_path, synthetic=True, difficulty=difficulty, count=10)
        meta = tmp_path / PATHFINDER.with_name(difficulty) / "metadata" / "0.npy"
        lines = meta.read_text().splitlines()
        assert len(lines) == 10 and all(line.split(" ")[4:] == fields for line in lines)


def test_pathfinder_downsampling_keeps_the_brightest_pixel_of_each_block(tmp_path):
    write_synthetic_pathfinder(tmp_path / PATHFINDER, count=20)
    full = LraPathfinder(data_root=tmp_path, download=False)
    half = LraPathfinder(data_root=tmp_path, download=False, downsample=2)
    full.setup()
    half.setup()
    assert half.max_length == 256 and half.backbone_inputs()["max_length"] == 256
    for split in ("train", "val", "test"):
        images = torch.stack(list(full.datasets()[split].tokens)).reshape(-1, 1, 32, 32).float()
        expected = torch.nn.functional.max_pool2d(images, 2).reshape(len(images), 256).to(torch.uint8)
        assert torch.equal(torch.stack(list(half.datasets()[split].tokens)), expected)
        assert torch.equal(half.datasets()[split].labels, full.datasets()[split].labels)
