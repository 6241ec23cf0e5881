"""CIFAR data path: the upstream pickle layout, the archive checksum, splits and batch augmentation."""
from __future__ import annotations

import pickle
import tarfile

import pytest
import torch

from lab.download import DataError, file_digest
from tasks.cifar import Cifar10, Cifar100, random_crop_flip
from tasks.synthetic_cifar import write_synthetic_cifar


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar(root / Cifar10.folder, Cifar10, train_per_class=20, test_per_class=5)
    return root


def test_synthetic_files_have_the_upstream_layout(cifar_root):
    folder = cifar_root / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"])
    with open(folder / "data_batch_1", "rb") as handle:
        entry = pickle.load(handle, encoding="latin1")
    assert set(entry) == {"batch_label", "labels", "data", "filenames"}
    assert entry["data"].dtype.name == "uint8" and entry["data"].shape[1] == 3072
    with open(folder / "batches.meta", "rb") as handle:
        assert len(pickle.load(handle, encoding="latin1")["label_names"]) == 10


def test_task_loads_splits(cifar_root):
    task = Cifar10(data_root=cifar_root, download=False, val_fraction=0.1)
    task.setup()
    sizes = {split: len(ds) for split, ds in task.datasets().items()}
    assert sizes == {"train": 180, "val": 20, "test": 50}
    item = task.datasets()["train"][0]
    assert item["images"].shape == (3, 32, 32) and item["images"].dtype == torch.uint8
    assert task.num_classes == 10
    # the split is seeded: same seed, same validation images
    again = Cifar10(data_root=cifar_root, download=False)
    again.setup()
    assert torch.equal(again.datasets()["val"].tensors["images"], task.datasets()["val"].tensors["images"])


def test_cifar100_layout(tmp_path):
    write_synthetic_cifar(tmp_path / Cifar100.folder, Cifar100, train_per_class=2, test_per_class=1)
    task = Cifar100(data_root=tmp_path, download=False)
    task.setup()
    assert task.num_classes == 100 and len(task.datasets()["test"]) == 100


def test_digits_stand_in_holds_the_real_digits_in_the_cifar10_layout(tmp_path):
    from sklearn.datasets import load_digits

    from tasks.prepare import main as prepare

    assert prepare(["cifar10", "--synthetic", "--option", "stand_in=digits", "--root", str(tmp_path)]) == 0
    task = Cifar10(data_root=tmp_path, download=False, val_fraction=0.1)
    task.setup()
    splits = task.datasets()
    assert sum(len(split) for split in splits.values()) == 1797 and task.class_names == [str(d) for d in range(10)]
    test = splits["test"].tensors
    assert len(test["labels"]) == 359 and test["labels"].bincount().min() >= 35  # 20% of each class, rounded
    digits = load_digits()  # every stored image is one of them, scaled to 32x32, with its own label
    grey = torch.from_numpy(digits.images).float()[:, None] / 16  # (1797, 1, 8, 8)
    large = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear")[:, 0] * 255  # (1797, 32, 32)
    for image, label in zip(test["images"][:5], test["labels"][:5]):
        assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
        distance = (large - image[0].float()).abs().amax((1, 2))
        assert distance.min() <= 0.5 and digits.target[int(distance.argmin())] == int(label)
    assert prepare(["cifar100", "--synthetic", "--option", "stand_in=digits", "--root", str(tmp_path)]) == 2


def test_real_archive_is_checksummed_and_extracted(tmp_path, monkeypatch):
    source = tmp_path / "src"
    write_synthetic_cifar(source / Cifar10.folder, Cifar10, train_per_class=2, test_per_class=1)
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / Cifar10.archive, "w:gz") as tf:
        tf.add(source / Cifar10.folder, arcname=Cifar10.folder)
    monkeypatch.setattr(Cifar10, "md5", "0" * 32)
    with pytest.raises(DataError, match="corrupt"):
        Cifar10.prepare(root, download=False)
    monkeypatch.setattr(Cifar10, "md5", file_digest(root / Cifar10.archive))
    Cifar10.prepare(root, download=False)
    assert Cifar10.is_extracted(root)


def test_truncated_pickle_is_a_clear_error(tmp_path):
    write_synthetic_cifar(tmp_path / Cifar10.folder, Cifar10, train_per_class=2, test_per_class=1)
    path = tmp_path / Cifar10.folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    task = Cifar10(data_root=tmp_path, download=False)
    with pytest.raises(DataError, match="data_batch_3"):
        task.setup()


def test_random_crop_flip_shifts_and_mirrors():
    images = torch.arange(2 * 1 * 32 * 32, dtype=torch.float32).view(2, 1, 32, 32)
    out = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    for b in range(2):  # every output is a shifted (maybe mirrored) window of the zero-padded input
        padded = torch.nn.functional.pad(images[b, 0], (4, 4, 4, 4))
        windows = [padded[y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
        assert any(torch.equal(out[b, 0], w) or torch.equal(out[b, 0], w.flip(1)) for w in windows)
    same = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, same), "augmentation must depend only on the generator"
