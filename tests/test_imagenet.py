"""ImageNet data path: the ILSVRC2012 archives through torchvision, the ImageFolder layout, the 224 pipelines,
top-5, and the one-line error for a missing archive."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from PIL import Image

import train
from lab.download import DataError, file_digest
from lab.registry import ConfigError
from tasks.image_files import ImageFiles, Pipeline, random_resized_crop_box
from tasks.imagenet import ImageNet
from tasks.synthetic_imagenet import CLASSES, write_synthetic_imagenet


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet_data")
    write_synthetic_imagenet(root / "imagenet", train_per_class=12, val_per_class=3)
    return root


def write_ilsvrc_archives(prepared: Path, dest: Path) -> None:
    """The three ILSVRC2012 archives, in their real formats, holding the images of a prepared tree:
    the devkit (data/meta.mat synsets + val ground truth), the train tar of per-class tars, the flat val tar."""
    import scipy.io

    names, val_wnids = torch.load(prepared / "meta.bin", weights_only=True)
    wnids = sorted(names)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    synsets = [(i + 1, w, ", ".join(names[w]), "", 0, np.zeros(0), 0, 12) for i, w in enumerate(wnids)]
    synsets.append((len(wnids) + 1, "n99999999", "synthetic thing", "", len(wnids), np.arange(1, len(wnids) + 1), 1, 0))
    meta = np.array(synsets, dtype=[(f, "O") for f in fields])
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": meta})
    truth = "\n".join(str(wnids.index(w) + 1) for w in val_wnids) + "\n"
    with tarfile.open(dest / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tf:
        for name, data in (("data/meta.mat", mat.getvalue()),
                           ("data/ILSVRC2012_validation_ground_truth.txt", truth.encode())):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with tarfile.open(dest / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in wnids:
            inner = dest / f"{wnid}.tar"
            with tarfile.open(inner, "w") as tf:
                for image in sorted((prepared / "train" / wnid).iterdir()):
                    tf.add(image, arcname=image.name)
            outer.add(inner, arcname=inner.name)
            inner.unlink()
    with tarfile.open(dest / "ILSVRC2012_img_val.tar", "w") as tf:
        for image in sorted((prepared / "val").glob("*/*.JPEG"), key=lambda p: p.name):
            tf.add(image, arcname=image.name)


def test_synthetic_stand_in_has_the_prepared_imagenet_layout(synthetic_root):
    folder = synthetic_root / "imagenet"
    wnids = sorted(p.name for p in (folder / "train").iterdir())
    assert len(wnids) == len(CLASSES) == 10 and all(w.startswith("n") and len(w) == 9 for w in wnids)
    assert sorted(p.name for p in (folder / "train" / wnids[0]).iterdir())[0] == f"{wnids[0]}_0.JPEG"
    assert sum(1 for _ in (folder / "val").glob("*/ILSVRC2012_val_000000??.JPEG")) == 30
    names, val_wnids = torch.load(folder / "meta.bin", weights_only=True)
    assert sorted(names) == wnids and len(val_wnids) == 30


@pytest.mark.parametrize("layout", ["imagenet", "imagefolder"])
def test_task_reads_both_layouts_with_a_seeded_validation_split(synthetic_root, layout):
    task = ImageNet(data_root=synthetic_root, download=False, layout=layout, val_fraction=0.25, crop_size=32,
                    resize_size=36)
    task.setup()
    sizes = {split: len(ds) for split, ds in task.datasets().items()}
    assert sizes == {"train": 90, "val": 30, "test": 30} and task.num_classes == 10
    item = task.datasets()["val"][0]
    assert item["images"].shape == (3, 32, 32) and item["images"].dtype == torch.uint8
    again = ImageNet(data_root=synthetic_root, download=False, layout=layout, val_fraction=0.25)
    again.setup()
    assert again.datasets()["val"].samples == task.datasets()["val"].samples
    if layout == "imagenet":
        assert task.class_names[0].startswith("synthetic ")  # names from meta.bin, not wnids


def test_missing_archive_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "data" / "imagenet").mkdir(parents=True)
    (tmp_path / "data" / "imagenet" / "ILSVRC2012_img_train.tar").touch()  # present: not named
    code = train.main(["task=imagenet", f"data.root={tmp_path}/data", f"output_dir={tmp_path}/runs",
                       f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "archives ILSVRC2012_devkit_t12.tar.gz, ILSVRC2012_img_val.tar not found" in err
    assert "ILSVRC2012_img_train.tar" not in err and err.endswith(f"in {(tmp_path / 'data' / 'imagenet').resolve()}")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_ilsvrc_archives_are_verified_and_extracted_by_torchvision(synthetic_root, tmp_path, monkeypatch):
    import torchvision.datasets.imagenet as tv_imagenet

    folder = tmp_path / "imagenet"
    folder.mkdir()
    write_ilsvrc_archives(synthetic_root / "imagenet", folder)
    for key, (name, _) in tv_imagenet.ARCHIVE_META.items():
        monkeypatch.setitem(tv_imagenet.ARCHIVE_META, key, (name, "0" * 32))
    with pytest.raises(DataError, match="ILSVRC2012_devkit_t12.tar.gz"):  # wrong md5: one line, no traceback
        ImageNet.prepare(tmp_path)
    for key, (name, _) in tv_imagenet.ARCHIVE_META.items():
        monkeypatch.setitem(tv_imagenet.ARCHIVE_META, key, (name, file_digest(folder / name)))
    task = ImageNet(data_root=tmp_path, download=False, val_fraction=0.25, crop_size=32, resize_size=36)
    task.setup()
    reference = ImageNet(data_root=synthetic_root, download=False, val_fraction=0.25)
    reference.setup()
    def samples(of: ImageNet, split: str, root: Path) -> list[tuple[str, int]]:
        return [(Path(path).relative_to(root).as_posix(), label) for path, label in of.datasets()[split].samples]

    for split in ("train", "val", "test"):
        assert samples(task, split, folder) == samples(reference, split, synthetic_root / "imagenet"), split
    assert task.class_names == reference.class_names


def test_random_resized_crop_box_stays_inside_and_follows_its_ranges():
    generator = torch.Generator().manual_seed(0)
    for height, width in [(375, 500), (64, 300), (80, 80)]:
        for _ in range(200):
            top, left, h, w = random_resized_crop_box(height, width, 0.08, generator)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            if (h, w) != (height, width) and top + left > 0:  # a drawn box (not the fallback center crop)
                assert 0.08 * height * width * 0.97 <= h * w <= height * width * 1.03
                assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_training_crops_depend_on_seed_epoch_and_index_only(synthetic_root):
    task = ImageNet(data_root=synthetic_root, download=False, val_fraction=0.25, crop_size=32, resize_size=36)
    task.setup()
    train_set = task.datasets()["train"]
    train_set.set_epoch(3, seed=7)
    first = train_set[5]["images"]
    assert torch.equal(train_set[5]["images"], first), "same (seed, epoch, index): same crop"
    train_set.set_epoch(4, seed=7)
    assert not torch.equal(train_set[5]["images"], first), "another epoch: another crop"


def test_eval_pipeline_is_resize_then_center_crop(tmp_path):
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    out = ImageFiles([(str(path), 3)], Pipeline(crop_size=224, resize_size=256), train=False)[0]
    reference = T.Compose([T.Resize(256, antialias=True), T.CenterCrop(224)])(image)
    assert out["images"].shape == (3, 224, 224) and out["labels"].item() == 3
    assert (out["images"].int() - reference.int()).abs().max() <= 1


def test_top5_counts_a_hit_anywhere_in_the_five_largest_logits(synthetic_root):
    task = ImageNet(data_root=synthetic_root, download=False, val_fraction=0.25, crop_size=32, resize_size=36)
    task.setup()
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0]] * 3)
    model = lambda images: logits  # noqa: E731
    batch = {"images": torch.zeros(3, 3, 32, 32, dtype=torch.uint8), "labels": torch.tensor([0, 4, 5])}
    outputs = task.eval_step(model, batch)
    metrics = task.metrics(outputs, "test").metrics
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["top5"] == pytest.approx(2 / 3)


def test_weights_trained_with_another_pipeline_are_refused_naming_the_overrides(synthetic_root):
    task = ImageNet(data_root=synthetic_root, download=False)
    expected = {"crop_size": 224, "resize_size": 242, "interpolation": "bilinear",
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with pytest.raises(ConfigError, match=r"set task.resize_size=242$"):
        task.check_preprocessing(expected, "torchvision:vit_l_16.IMAGENET1K_V1")
    task.check_preprocessing({**expected, "resize_size": 256}, "torchvision:vit_b_16.IMAGENET1K_V1")


# -- end to end: train softmax, convert its checkpoint with init= --------------------------------------
TINY = ["experiment=imagenet_tiny", "model.dim=48", "model.depth=2", "trainer.batch_size=32",
        "tracking.system_metrics=false", "trainer.log_every=5"]


@pytest.fixture(scope="module")
def learnable_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet_learnable")
    write_synthetic_imagenet(root / "imagenet", train_per_class=40, val_per_class=10)
    return root


def run_args(tmp: Path, root: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.root={root}", f"output_dir={tmp}/runs", f"tracking.uri=sqlite:///{tmp}/mlflow.db", *extra]


def runs_by_name(tmp: Path) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("imagenet")
    return client, {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def test_softmax_run_learns_and_its_checkpoint_converts_with_init(tmp_path, learnable_root):
    assert train.main(run_args(tmp_path, learnable_root, "attention=softmax", "trainer.epochs=4")) == 0
    client, runs = runs_by_name(tmp_path)
    softmax = runs["imagenet-softmax-imagenet_tiny-s0"]
    assert softmax.data.metrics["test/accuracy"] > 0.4, "10 classes: chance is 0.1"
    assert "test/top5" in softmax.data.metrics
    best = Path(softmax.data.tags["run_dir"]) / "best.pt"

    # the same weights back in with init=: validation at step 0 equals the best validation of the source
    assert train.main(run_args(tmp_path / "same", learnable_root, "attention=softmax", "trainer.epochs=0",
                               f"init={best}")) == 0
    client, runs = runs_by_name(tmp_path / "same")
    (step0,) = client.get_metric_history(runs["imagenet-softmax-imagenet_tiny-s0"].info.run_id, "val/accuracy")
    best_val = max(m.value for m in runs_by_name(tmp_path)[0].get_metric_history(softmax.info.run_id, "val/accuracy"))
    assert step0.step == 0 and step0.value == best_val

    # converted to LUNA, with LOTFormer's stage 1 for two steps, then one epoch of fine-tuning
    assert train.main(run_args(tmp_path, learnable_root, "attention=luna", "trainer.epochs=1", f"init={best}",
                               "trainer.stage1_steps=2", "trainer.stage1_target=outputs")) == 0
    client, runs = runs_by_name(tmp_path)
    luna = runs["imagenet-luna-imagenet_tiny-s0"]
    assert luna.info.status == "FINISHED"
    assert luna.data.tags["init"] == str(best) and luna.data.tags["init_sha256"] == file_digest(best, "sha256")
    assert "attn.core.feature_map" in luna.data.tags["init_new_tensors"]
    assert [m.step for m in client.get_metric_history(luna.info.run_id, "stage1/loss")] == [1, 2]
    assert client.get_metric_history(luna.info.run_id, "val/accuracy")[0].step == 0

    # ESP adds no tensors: a stage 1 has nothing to fit, refused before anything is written
    assert train.main(run_args(tmp_path / "esp", learnable_root, "attention=esp", f"init={best}",
                               "trainer.stage1_steps=2")) == 2
    assert not (tmp_path / "esp").exists()


@pytest.mark.parametrize("extra, message", [
    (["attention=luna", "trainer.stage1_steps=2"], "trainer.stage1_steps .* needs init="),
    (["attention=luna", "trainer.stage1_steps=-1"], "trainer.stage1_steps must be >= 0"),
    (["attention=softmax", "init=/no/such/best.pt"], "init checkpoint /no/such/best.pt does not exist"),
])
def test_conversion_mistakes_exit_2_before_anything_is_written(tmp_path, learnable_root, capsys, extra, message):
    assert train.main(run_args(tmp_path, learnable_root, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
