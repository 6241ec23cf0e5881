"""CIFAR-10 / CIFAR-100 image classification (Krizhevsky 2009) with a ViT.

On disk exactly as the upstream archives unpack (`cifar-10-batches-py/data_batch_1..5, test_batch,
batches.meta`; `cifar-100-python/train, test, meta`): Python pickles holding `data` (uint8, N x 3072,
channel-major 32x32) and `labels` / `fine_labels`. We read the pickles ourselves: torchvision's classes
md5-check every extracted file, which rejects the generated stand-ins tests use; the real archive's
checksum is verified on download instead.

Splits: train 45k / val 5k (seeded split of the training batches) / test 10k. Augmentation
(random crop 32 with 4 px zero padding + horizontal flip) runs on whole batches and draws only from
the trainer's per-step generator, so resumed runs repeat exactly.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from lab.data import TensorDictDataset
from lab.download import DataError, download as download_file, extract, verify
from lab.registry import ConfigError

from . import register_task
from .classification import ClassificationTask


class BatchUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batch files hold (dicts, lists, strings, numbers and numpy arrays): any other
    global, e.g. a function a crafted file would call, is refused instead of imported."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],  # the upstream files'
               ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],  # numpy >= 2 names it so
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}  # bytes in protocol-2 files written by Python 3

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it holds a pickled {module}.{name}, which CIFAR batches never contain "
                                         "(refused: loading it could run code)")
        return self.ALLOWED[module, name]


def read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            entry = BatchUnpickler(handle, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise DataError(f"cannot read {path}: {error}; delete the folder and prepare the data again") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path} does not hold a CIFAR batch; delete the folder and prepare the data again")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def random_crop_flip(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Per-image random crop (zero padding) and horizontal flip of a (B, C, H, W) batch."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(images.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=images.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return cropped.permute(0, 3, 1, 2)


@register_task("cifar10")
class Cifar10(ClassificationTask):
    folder: ClassVar[str] = "cifar-10-batches-py"
    archive: ClassVar[str] = "cifar-10-python.tar.gz"
    url: ClassVar[str] = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    md5: ClassVar[str] = "c58f30108f718f92721af3b95e74349a"
    train_files: ClassVar[tuple[str, ...]] = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files: ClassVar[tuple[str, ...]] = ("test_batch",)
    meta_file: ClassVar[str] = "batches.meta"
    label_key: ClassVar[str] = "labels"
    names_key: ClassVar[str] = "label_names"
    mean: ClassVar[tuple[float, ...]] = (0.4914, 0.4822, 0.4465)
    std: ClassVar[tuple[float, ...]] = (0.2470, 0.2435, 0.2616)

    def __init__(self, *, data_root: Path, download: bool, val_fraction: float = 0.1, augment: bool = True,
                 split_seed: int = 0):
        super().__init__(data_root=data_root, download=download)
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"task.val_fraction must be in (0, 1), got {val_fraction}")
        self.val_fraction, self.augment, self.split_seed = val_fraction, augment, split_seed
        self.splits: dict[str, TensorDictDataset] = {}

    # -- data on disk ---------------------------------------------------------------------------
    @classmethod
    def prepare(cls, root: Path, *, synthetic: bool = False, download: bool = True,
                stand_in: Literal["glyphs", "digits"] = "glyphs") -> None:
        """The real archive, or with `synthetic` a stand-in in its layout: generated glyphs
        (tasks/synthetic_cifar.py) or scikit-learn's real handwritten digits (tasks/digits_cifar.py)."""
        root = Path(root)
        if stand_in == "digits" and (not synthetic or cls.label_key != "labels"):
            raise ConfigError("stand_in=digits writes a 10-class stand-in: use it with --synthetic and cifar10")
        if synthetic:
            from .digits_cifar import write_digits_cifar
            from .synthetic_cifar import write_synthetic_cifar

            (write_digits_cifar if stand_in == "digits" else write_synthetic_cifar)(root / cls.folder, cls)
            return
        if cls.is_extracted(root):
            return
        archive = root / cls.archive
        if archive.exists():
            verify(archive, cls.md5)
        elif download:
            try:
                download_file(cls.url, archive, cls.md5)
            except DataError as error:
                raise DataError(f"{cls.registry_name} not found under {root}: {error}") from None
        else:
            raise DataError(f"{cls.registry_name} not found under {root}: download {cls.url} (md5 {cls.md5}) "
                            f"and put it at {archive}, or extract it there as {root / cls.folder}")
        extract(archive, root)

    @classmethod
    def is_extracted(cls, root: Path) -> bool:
        folder = Path(root) / cls.folder
        return all((folder / name).exists() for name in (*cls.train_files, *cls.test_files, cls.meta_file))

    def _read(self, names: tuple[str, ...]) -> tuple[Tensor, Tensor]:
        entries = [read_pickle(self.data_root / self.folder / name) for name in names]
        data = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries])
        labels = np.concatenate([np.asarray(e[self.label_key], dtype=np.int64) for e in entries])
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
            raise DataError(f"{self.data_root / self.folder} does not hold CIFAR batches (data {data.shape}); "
                            "delete it and prepare the data again")
        return torch.from_numpy(data).view(-1, 3, 32, 32), torch.from_numpy(labels)

    def setup(self) -> None:
        self.prepare(self.data_root, download=self.download)
        self.class_names = list(read_pickle(self.data_root / self.folder / self.meta_file)[self.names_key])
        images, labels = self._read(self.train_files)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        num_val = max(1, round(self.val_fraction * len(labels)))
        train_idx, val_idx = order[num_val:], order[:num_val]
        test_images, test_labels = self._read(self.test_files)
        self.splits = {"train": TensorDictDataset(images=images[train_idx], labels=labels[train_idx]),
                       "val": TensorDictDataset(images=images[val_idx], labels=labels[val_idx]),
                       "test": TensorDictDataset(images=test_images, labels=test_labels)}

    def datasets(self):
        return self.splits

    # -- model and batches ----------------------------------------------------------------------
    def backbone_inputs(self) -> dict:
        return {"image_size": 32, "in_channels": 3}

    def transform(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> dict[str, Tensor]:
        images = batch["images"]
        if generator is not None and self.augment:
            images = random_crop_flip(images, generator)
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return {**batch, "images": (images.float() / 255.0 - mean) / std}


@register_task("cifar100")
class Cifar100(Cifar10):
    folder = "cifar-100-python"
    archive = "cifar-100-python.tar.gz"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    md5 = "eb9058c3a382ffc7106e4002c42a8d85"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    label_key = "fine_labels"
    names_key = "fine_label_names"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
