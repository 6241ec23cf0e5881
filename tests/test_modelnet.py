"""The ModelNet task end to end on synthetic meshes written in the real raw layout (tasks/modelnet.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lab.data import stratified_split
from lab.download import DataError
from tasks import build_task, list_tasks
from tasks.modelnet import ModelNet40
from tasks.synthetic_shapes import MODELNET10_CLASSES, SHAPES

SHAPE_CLASSES = sorted(SHAPES)
POINTS = 128  # small clouds keep the processing and the learning run fast


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from tasks.prepare import main as prepare

    root = tmp_path_factory.mktemp("modelnet")
    assert prepare(["modelnet40", "--synthetic", "--root", str(root)]) == 0
    return root


def make_task(root: Path, **options) -> ModelNet40:
    task = build_task("modelnet", data_root=root, download=False, num_points=POINTS, **options)
    task.setup()
    return task


def test_registered_names():
    assert {"modelnet40", "modelnet10"} <= set(list_tasks())
    assert type(build_task("modelnet", data_root=Path("."), download=False)) is ModelNet40


def test_synthetic_meshes_are_in_the_real_layout_that_stock_pyg_reads(root):
    from torch_geometric.datasets import ModelNet

    raw = root / "ModelNet40" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted([*SHAPE_CLASSES, *MODELNET10_CLASSES])
    assert all(not any((raw / name).iterdir()) for name in MODELNET10_CLASSES)
    assert len(list((raw / "torus" / "train").glob("torus_*.off"))) == 24
    assert sorted(p.name for p in (raw / "torus" / "test").iterdir())[0] == "torus_0025.off"
    texts = [p.read_text() for p in (raw / "box" / "train").glob("*.off")]
    assert any(t.startswith("OFF\n#") for t in texts)
    assert any(re.match(r"OFF\d+ \d+ 0\n", t) for t in texts)  # the glued header (counts vary: holes, clutter)
    # stock PyG (no download, its own reader) accepts the layout, except the files with comments
    plain = root / "stock"
    for path in raw.rglob("*"):
        target = plain / "raw" / path.relative_to(raw)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif "#" not in path.read_text():
            target.write_text(path.read_text())
    stock = ModelNet(str(plain), name="40", train=False)
    assert len(stock) == len(list((plain / "raw").rglob("test/*.off")))


def test_processed_splits_shapes_labels_and_classes(root):
    task = make_task(root)
    assert task.class_names == SHAPE_CLASSES and task.num_classes == 8  # empty ModelNet10 folders dropped
    splits = task.datasets()
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 8 * 22, "val": 8 * 2, "test": 8 * 8}
    item = splits["train"][0]
    assert item["points"].shape == (POINTS, 3) and item["points"].dtype == torch.float32
    assert item["labels"].dtype == torch.int64
    for split in splits.values():
        assert torch.equal(split.tensors["labels"].bincount(), torch.full((8,), len(split) // 8))
        assert split.tensors["points"].abs().amax() <= 1.0 + 1e-6  # NormalizeScale
    batch = task.collate([splits["test"][i] for i in range(4)])
    assert batch["points"].shape == (4, POINTS, 3) and batch["labels"].shape == (4,)
    assert task.backbone_inputs() == {"in_channels": 3}
    assert task.describe()["data.classes"] == ",".join(SHAPE_CLASSES)


def test_second_load_hits_the_cache_and_new_settings_reprocess(root, monkeypatch):
    make_task(root)
    cache = root / "ModelNet40" / f"processed_{POINTS}" / "training.pt"
    stamp = cache.stat().st_mtime_ns
    first = make_task(root).datasets()["test"].tensors["points"]

    def no_reading(path):
        raise AssertionError(f"{path} was read again although the cache exists")

    monkeypatch.setattr("tasks.modelnet_pyg.read_off", no_reading)
    assert torch.equal(make_task(root).datasets()["test"].tensors["points"], first)
    assert cache.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    with_normals = make_task(root, normals=True)
    assert (root / "ModelNet40" / f"processed_{POINTS}_normals").is_dir()
    points = with_normals.datasets()["train"].tensors["points"]
    assert points.shape[-1] == 6 and with_normals.backbone_inputs() == {"in_channels": 6}
    assert torch.allclose(points[..., 3:].norm(dim=-1), torch.ones(()), atol=1e-5)


def test_validation_split_is_stratified_seeded_and_disjoint():
    labels = torch.arange(5).repeat_interleave(20)
    keep, held = stratified_split(labels, 0.25, seed=3)
    assert torch.equal(labels[held].bincount(), torch.full((5,), 5))
    assert set(keep.tolist()).isdisjoint(held.tolist()) and len(keep) + len(held) == 100
    assert torch.equal(held, stratified_split(labels, 0.25, seed=3)[1])
    assert not torch.equal(held, stratified_split(labels, 0.25, seed=4)[1])


def test_augmentation_draws_only_from_the_generator(root):
    task = make_task(root, normals=True)
    batch = task.collate([task.datasets()["train"][i] for i in range(6)])
    first = task.transform(batch, torch.Generator().manual_seed(5))["points"]
    torch.manual_seed(123)  # the global RNG must not matter
    again = task.transform(batch, torch.Generator().manual_seed(5))["points"]
    assert torch.equal(first, again)
    assert task.transform(batch, None) is batch  # evaluation sees the clouds unchanged
    assert not torch.equal(first, task.transform(batch, torch.Generator().manual_seed(6))["points"])
    moved = first[..., :3] - batch["points"][..., :3]
    assert moved.abs().amax() > 0.05 and torch.allclose(first[..., 3:].norm(dim=-1), torch.ones(()), atol=1e-5)
    # points of a plane stay on a plane perpendicular to their (transformed) normals
    tilted = torch.nn.functional.normalize(torch.tensor([0.3, -0.2, -1.0]), dim=0)
    xy = torch.rand(2, 50, 2, generator=torch.Generator().manual_seed(0))
    plane = torch.cat([xy, (0.3 * xy[..., :1] - 0.2 * xy[..., 1:])], dim=-1)  # z = 0.3 x - 0.2 y
    flat = {"points": torch.cat([plane, tilted.expand(2, 50, 3)], dim=-1), "labels": torch.zeros(2)}
    out = make_task(root, normals=True, jitter=0.0).transform(flat, torch.Generator().manual_seed(1))["points"]
    offsets = out[:, :, :3] - out[:, :1, :3]
    assert (offsets * out[..., 3:]).sum(-1).abs().amax() < 1e-5
    assert not torch.allclose(out[..., 3:], tilted.expand(2, 50, 3), atol=1e-2)

def test_missing_data_offline_fails_with_one_line(tmp_path, monkeypatch):
    task = build_task("modelnet40", data_root=tmp_path, download=False)
    with pytest.raises(DataError) as error:
        task.setup()
    message = str(error.value)
    assert "\n" not in message and "http://modelnet.cs.princeton.edu/ModelNet40.zip" in message
    assert str(tmp_path / "ModelNet40.zip") in message and "unzips" in message
    monkeypatch.setattr(ModelNet40, "url", "http://127.0.0.1:9/ModelNet40.zip")  # nothing listens there
    with pytest.raises(DataError) as error:
        build_task("modelnet40", data_root=tmp_path, download=True).setup()
    message = str(error.value)
    assert "\n" not in message and "could not download http://127.0.0.1:9/ModelNet40.zip" in message
    assert str(tmp_path / "ModelNet40.zip") in message and not (tmp_path / "ModelNet40.zip").exists()


def test_a_placed_archive_is_verified_and_unzipped_into_the_raw_layout(root, tmp_path, monkeypatch):
    import zipfile

    from lab.download import file_digest

    archive = tmp_path / "ModelNet40.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((root / "ModelNet40" / "raw").rglob("*.off")):
            zf.write(path, Path("ModelNet40") / path.relative_to(root / "ModelNet40" / "raw"))
    monkeypatch.setattr(ModelNet40, "url", "http://127.0.0.1:9/ModelNet40.zip")
    monkeypatch.setattr(ModelNet40, "sha256", "0" * 64)
    with pytest.raises(DataError, match="ModelNet40.zip is corrupt: sha256"):
        make_task(tmp_path)
    monkeypatch.setattr(ModelNet40, "sha256", file_digest(archive, "sha256"))
    task = make_task(tmp_path)
    assert task.class_names == SHAPE_CLASSES and len(task.datasets()["test"]) == 64
    assert not (tmp_path / "ModelNet40" / "unpacked").exists()


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> Path:
    """One MLflow store for the module's training runs (creating a store costs seconds)."""
    return tmp_path_factory.mktemp("tracking")


def run_trainer(tracking: Path, root: Path, *extra: str):
    """Train in-process with a tiny setting; the MLflow run it recorded."""
    from mlflow.tracking import MlflowClient

    import train

    args = ["task=modelnet40", "attention=softmax", f"data.root={root}", f"task.num_points={POINTS}",
            "trainer.batch_size=16", "trainer.lr=3e-3", "tracking.system_metrics=false", "resume=null",
            f"output_dir={tracking}/runs", f"tracking.uri=sqlite:///{tracking}/mlflow.db", *extra]
    assert train.main(args) == 0
    client = MlflowClient(f"sqlite:///{tracking}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("modelnet40").experiment_id],
                              order_by=["attributes.start_time DESC"])
    return runs[0]


def test_a_short_training_run_learns_the_synthetic_shapes(root, tracking, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = run_trainer(tracking, root, "trainer.epochs=25", "model.dim=32", "model.depth=1", "model.num_heads=2",
                      "model.neighbours=8", "model.num_tokens=32", "model.head_hidden=32", "model.head_dropout=0.0")
    metrics = run.data.metrics
    # chance: 1/8; pose, clutter and holes make the stand-in take a few hundred steps (275 here)
    assert metrics["test/accuracy"] >= 0.35 and metrics["test/mean_class_accuracy"] >= 0.35
    assert run.data.params["data.classes"] == ",".join(SHAPE_CLASSES) and run.data.tags["model"] == "point_transformer"


def test_set_transformer_trains_through_the_trainer(root, tracking, monkeypatch):
    """`model.name=` swaps the backbone: the task file leaves its sizes to each backbone's defaults."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = run_trainer(tracking, root, "model.name=set_transformer", "model.dim=32", "trainer.max_steps=2", "seed=1")
    assert run.data.tags["model"] == "set_transformer" and run.data.params["model.num_inducing"] == "16"
    assert "test/accuracy" in run.data.metrics and run.info.status == "FINISHED"


def test_offline_training_without_data_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    import train

    monkeypatch.setattr(ModelNet40, "url", "http://127.0.0.1:9/ModelNet40.zip")
    assert train.main(["task=modelnet", "attention=softmax", f"data.root={tmp_path}", f"output_dir={tmp_path}/runs",
                       f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: could not download") and "ModelNet40.zip" in error
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("args, expected", [
    (["task=modelnet40"], {"model.name": "point_transformer", "model.num_tokens": 128, "task.num_points": 1024}),
    (["task=modelnet10"], {"task.name": "modelnet10", "model.name": "point_transformer"}),
    (["task=modelnet", "model.name=set_transformer"], {"task.name": "modelnet40", "model.name": "set_transformer"}),
    (["experiment=modelnet_set_transformer"],
     {"model.name": "set_transformer", "model.dim": 256, "model.num_heads": 4, "model.num_inducing": 16,
      "task.num_points": 1000, "trainer.optimizer": "adam", "trainer.lr": 1e-3, "trainer.epochs": 200,
      "trainer.batch_size": 64}),
    (["experiment=modelnet_pct"], {"model.name": "point_transformer", "model.depth": 4, "model.dim": 128,
                                   "model.num_tokens": 256, "task.name": "modelnet40"}),
])
def test_config_files_resolve_to_the_documented_settings(args, expected):
    from train import load_config

    resolved = load_config([*args, "attention=softmax"]).to_dict()
    for key, value in expected.items():
        section, name = key.split(".")
        assert resolved[section][name] == value, key
