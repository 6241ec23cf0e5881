"""ModelNet40 / ModelNet10 shape classification from point clouds (Wu et al. 2015, "3D ShapeNets").

Data: `torch_geometric.datasets.ModelNet` over the real archive (ModelNet40.zip, 9,843 train / 2,468 test
meshes), raw layout `<data_root>/ModelNet40/raw/<class>/{train,test}/<class>_NNNN.off`. Each mesh becomes
`num_points` surface samples (area-weighted `SamplePoints`, optionally with normals) scaled into [-1, 1]
(`NormalizeScale`); the sampled tensors are cached per setting (tasks/modelnet_pyg.py).

Labels: PyG numbers classes by the sorted class folders, empty ones included; classes without any mesh
(the empty ModelNet10 folders next to synthetic data) are dropped, so the head has one output per real class.
Validation: a class-stratified, seeded `val_fraction` of train. Training augmentation per cloud, drawn from
the trainer's generator: anisotropic scale, translation, clipped Gaussian jitter (normals follow the scale).
Metrics: accuracy (overall) and mean class accuracy, plus macro-F1 and a confusion matrix.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from lab.data import TensorDictDataset, stratified_split
from lab.download import DataError, extract
from lab.download import download as download_file
from lab.registry import ConfigError

from . import register_task
from .classification import ClassificationTask
from .synthetic_shapes import write_synthetic_modelnet

DOWNLOAD_TIMEOUT = 20.0  # seconds without an answer before a download counts as failed


@register_task("modelnet40", aliases=("modelnet",))
class ModelNet40(ClassificationTask):
    variant = "40"
    url = "http://modelnet.cs.princeton.edu/ModelNet40.zip"
    sha256 = "42dc3e656932e387f554e25a4eb2cc0e1a1bd3ab54606e2a9eae444c60e536ac"  # as published by several loaders

    def __init__(self, *, data_root: Path, download: bool, num_points: int = 1024, normals: bool = False,
                 val_fraction: float = 0.1, split_seed: int = 0, augment: bool = True, scale_low: float = 0.667,
                 scale_high: float = 1.5, translate: float = 0.2, jitter: float = 0.01, jitter_clip: float = 0.05):
        super().__init__(data_root=data_root, download=download)
        if not 0 < val_fraction < 1:
            raise ConfigError(f"task.val_fraction must be in (0, 1), got {val_fraction}")
        if num_points < 1:
            raise ConfigError(f"task.num_points must be positive, got {num_points}")
        self.num_points, self.normals = num_points, normals
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.augment_training = augment
        self.scale_range, self.translate = (scale_low, scale_high), translate
        self.jitter, self.jitter_clip = jitter, jitter_clip
        self.class_names: list[str] = []
        self._splits: dict[str, TensorDictDataset] = {}

    # -- data on disk ---------------------------------------------------------------------------
    @classmethod
    def folder(cls, root: Path) -> Path:
        return Path(root) / f"ModelNet{cls.variant}"

    @classmethod
    def raw_present(cls, root: Path) -> bool:
        raw = cls.folder(root) / "raw"
        return raw.is_dir() and any((entry / "train").is_dir() for entry in raw.iterdir())

    @classmethod
    def fetch(cls, root: Path, *, download: bool) -> None:
        """Make `<root>/ModelNet<variant>/raw` exist: unzip the archive, downloading it first if allowed."""
        folder = cls.folder(root)
        archive = Path(root) / Path(cls.url).name
        unzip_note = f"the next run unzips it into {folder / 'raw'}"
        if not archive.exists() and not download:
            raise DataError(f"ModelNet{cls.variant} not found under {folder / 'raw'}: download {cls.url}, "
                            f"put it at {archive}; {unzip_note}")
        try:
            download_file(cls.url, archive, cls.sha256, "sha256", timeout=DOWNLOAD_TIMEOUT)
        except DataError as error:
            raise DataError(f"{error}; {unzip_note}") from None
        unpacked = folder / "unpacked"
        shutil.rmtree(unpacked, ignore_errors=True)
        extract(archive, unpacked)
        inner = unpacked / folder.name
        if not inner.is_dir():
            raise DataError(f"{archive} holds no {folder.name}/ folder; delete it and download again")
        shutil.rmtree(folder / "raw", ignore_errors=True)
        inner.rename(folder / "raw")
        shutil.rmtree(unpacked)

    @classmethod
    def prepare(cls, root: Path, *, synthetic: bool = False, download: bool = True) -> None:
        """Put the meshes in place (real or `synthetic`), then sample and cache them with the default settings."""
        if synthetic and not cls.raw_present(root):
            write_synthetic_modelnet(cls.folder(root) / "raw")
        elif not cls.raw_present(root):
            cls.fetch(root, download=download)
        cls(data_root=root, download=False).setup()

    # -- splits ---------------------------------------------------------------------------------
    def setup(self) -> None:
        if not self.raw_present(self.data_root):
            self.fetch(self.data_root, download=self.download)
        from .modelnet_pyg import class_folders, load_split

        folder = self.folder(self.data_root)
        train_points, train_labels = load_split(folder, self.variant, True, self.num_points, self.normals)
        test_points, test_labels = load_split(folder, self.variant, False, self.num_points, self.normals)
        folders = class_folders(folder / "raw")
        present = torch.cat([train_labels, test_labels]).unique()  # sorted; drops classes without meshes
        new_label = torch.full((len(folders),), -1, dtype=torch.long)
        new_label[present] = torch.arange(len(present))
        self.class_names = [folders[i] for i in present.tolist()]
        train_labels, test_labels = new_label[train_labels], new_label[test_labels]
        keep, held_out = stratified_split(train_labels, self.val_fraction, self.split_seed)
        self._splits = {"train": TensorDictDataset(points=train_points[keep], labels=train_labels[keep]),
                        "val": TensorDictDataset(points=train_points[held_out], labels=train_labels[held_out]),
                        "test": TensorDictDataset(points=test_points, labels=test_labels)}

    def datasets(self) -> dict[str, TensorDictDataset]:
        if not self._splits:
            raise RuntimeError("call setup() before datasets()")
        return dict(self._splits)

    def backbone_inputs(self) -> dict:
        return {"in_channels": 6 if self.normals else 3}

    def describe(self) -> dict:
        return {**super().describe(), "data.num_classes": self.num_classes, "data.classes": ",".join(self.class_names)}

    # -- training -------------------------------------------------------------------------------
    def transform(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> dict[str, Tensor]:
        """Training (a `generator` given): per-cloud anisotropic scale, translation and clipped jitter of xyz;
        normals follow the scale. Evaluation: the clouds as they are."""
        if generator is None or not self.augment_training:
            return batch
        points = batch["points"]  # (B, N, C)
        b, n, _ = points.shape

        def uniform(low: float, high: float, *shape: int) -> Tensor:
            draw = torch.rand(shape, generator=generator, device=generator.device)
            return (low + (high - low) * draw).to(points.device, points.dtype)

        scale = uniform(*self.scale_range, b, 1, 3)  # (B, 1, 3)
        shift = uniform(-self.translate, self.translate, b, 1, 3)  # (B, 1, 3)
        noise = torch.randn((b, n, 3), generator=generator, device=generator.device).to(points.device, points.dtype)
        noise = (self.jitter * noise).clamp(-self.jitter_clip, self.jitter_clip)  # (B, N, 3)
        moved = [points[..., :3] * scale + shift + noise]
        if points.shape[-1] == 6:
            moved.append(F.normalize(points[..., 3:] / scale, dim=-1))  # normals transform by the inverse scale
        return {**batch, "points": torch.cat(moved, dim=-1)}


@register_task("modelnet10")
class ModelNet10(ModelNet40):
    variant = "10"
    url = "http://3dvision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip"
    sha256 = "9d8679435fc07d1d26f13009878db164a7aa8ea5e7ea3c8880e42794b7307d51"
