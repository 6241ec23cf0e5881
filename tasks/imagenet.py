"""ImageNet (ILSVRC2012, Russakovsky et al. 2015) classification, or any ImageFolder tree, with a ViT.

`layout=imagenet` (default): `torchvision.datasets.ImageNet` over the archives the user puts in
`<data.root>/<folder>` (default `./data/imagenet`): ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and
ILSVRC2012_devkit_t12.tar.gz. They cannot be downloaded automatically (image-net.org requires an account
and accepting its terms). On first use torchvision checks their md5, writes `meta.bin` from the devkit and
extracts `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` beside them; later runs read those folders.
`layout=imagefolder`: any tree `<folder>/train/<class>/<image>` and `<folder>/val/<class>/<image>`.

Splits: validation = a seeded `val_fraction` of train; test = the ImageNet val set (50,000 images; the
test set's labels are not public). Metrics: top-1 `accuracy` and `top5`. Pipelines (RandomResizedCrop +
flip for training; resize 256 -> center crop 224 for evaluation) in `tasks/image_files.py`; normalisation
with `mean`/`std` (ImageNet's by default, which torchvision's ViT weights use) happens on the device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from lab.download import DataError
from lab.registry import ConfigError

from . import register_task
from .classification import ClassificationTask

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNLOAD_PAGE = "https://image-net.org/download-images.php"


@register_task("imagenet")
class ImageNet(ClassificationTask):
    archives: ClassVar[tuple[str, ...]] = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar",
                                           "ILSVRC2012_img_val.tar")
    top_k = (5,)

    def __init__(self, *, data_root: Path, download: bool, layout: Literal["imagenet", "imagefolder"] = "imagenet",
                 folder: str = "imagenet", val_fraction: float = 0.01, split_seed: int = 0, crop_size: int = 224,
                 resize_size: int = 256, min_crop_scale: float = 0.08,
                 interpolation: Literal["bilinear", "bicubic"] = "bilinear", augment: bool = True,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__(data_root=data_root, download=download)
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"task.val_fraction must be in (0, 1), got {val_fraction}")
        if not 0 < crop_size <= resize_size:
            raise ConfigError(f"task.crop_size must be in (0, resize_size = {resize_size}], got {crop_size}")
        if not 0.0 < min_crop_scale <= 1.0:
            raise ConfigError(f"task.min_crop_scale must be in (0, 1], got {min_crop_scale}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(f"task.mean and task.std need 3 values (std > 0), got {list(mean)} and {list(std)}")
        self.layout, self.root = layout, self.data_root / folder  # an absolute `folder` replaces data.root
        self.val_fraction, self.split_seed, self.augment = val_fraction, split_seed, augment
        self.crop_size, self.resize_size = crop_size, resize_size
        self.min_crop_scale, self.interpolation = min_crop_scale, interpolation
        self.mean, self.std = tuple(mean), tuple(std)
        self.splits: dict[str, Any] = {}

    # -- data on disk ---------------------------------------------------------------------------
    @classmethod
    def prepare(cls, root: Path, *, synthetic: bool = False, download: bool = True,
                folder: str = "imagenet") -> None:
        """Check the user-placed archives (or write the synthetic stand-in); torchvision extracts on first use."""
        root = Path(root) / folder
        if synthetic:
            from .synthetic_imagenet import write_synthetic_imagenet

            write_synthetic_imagenet(root)
            return
        cls.extract(root)

    @classmethod
    def extract(cls, root: Path) -> None:
        """torchvision verifies the archives' md5, writes meta.bin and extracts both splits (once; hours for
        train). A missing archive: one line naming it and where to put it."""
        if cls.is_prepared(root):
            return
        missing = [archive for archive in cls.archives if not (root / archive).exists()]
        if missing:
            raise DataError(f"ImageNet archive{'s' * (len(missing) > 1)} {', '.join(missing)} not found: ImageNet "
                            f"cannot be downloaded automatically; download {'them' if len(missing) > 1 else 'it'} "
                            f"from {DOWNLOAD_PAGE} (free account) and put {'them' if len(missing) > 1 else 'it'} "
                            f"in {root.resolve()}")
        for split in ("train", "val"):
            cls._torchvision_split(root, split)

    @staticmethod
    def is_prepared(root: Path) -> bool:
        return (root / "meta.bin").is_file() and (root / "train").is_dir() and (root / "val").is_dir()

    @staticmethod
    def _torchvision_split(root: Path, split: str):
        from torchvision.datasets import ImageNet as TorchvisionImageNet

        try:
            return TorchvisionImageNet(str(root), split=split)
        except (RuntimeError, OSError) as error:  # a corrupt archive (md5), an unreadable meta.bin
            raise DataError(f"ImageNet under {root}: {str(error).splitlines()[0]}") from None

    def _read_splits(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """(train samples, test samples) as (path, class index); sets `class_names`."""
        if self.layout == "imagenet":
            self.extract(self.root)
            train, test = (self._torchvision_split(self.root, split) for split in ("train", "val"))
            self.class_names = [names[0] for names in train.classes]  # wnid order; first WordNet lemma
            return train.samples, test.samples
        from torchvision.datasets import ImageFolder

        try:
            train, test = (ImageFolder(str(self.root / split)) for split in ("train", "val"))
        except (FileNotFoundError, OSError) as error:
            raise DataError(f"no ImageFolder tree under {self.root} ({str(error).splitlines()[0]}); expected "
                            f"{self.root}/train/<class>/<image> and {self.root}/val/<class>/<image>") from None
        if test.classes != train.classes:
            raise DataError(f"{self.root}/val has classes {test.classes[:3]}... but train has "
                            f"{train.classes[:3]}...; both need the same class folders")
        self.class_names = list(train.classes)
        return train.samples, test.samples

    def setup(self) -> None:
        from .image_files import ImageFiles, Pipeline

        train_samples, test_samples = self._read_splits()
        order = torch.randperm(len(train_samples), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        num_val = max(1, round(self.val_fraction * len(train_samples)))
        pipeline = Pipeline(self.crop_size, self.resize_size, self.min_crop_scale, self.interpolation)
        self.splits = {
            "train": ImageFiles([train_samples[i] for i in order[num_val:]], pipeline, train=self.augment),
            "val": ImageFiles([train_samples[i] for i in order[:num_val]], pipeline, train=False),
            "test": ImageFiles(test_samples, pipeline, train=False),
        }

    def datasets(self):
        return self.splits

    # -- model and batches ----------------------------------------------------------------------
    def backbone_inputs(self) -> dict:
        return {"image_size": self.crop_size, "in_channels": 3}

    def transform(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> dict[str, Tensor]:
        images = batch["images"]  # uint8 (B, 3, crop, crop), already cropped (and flipped) by the loader
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return {**batch, "images": (images.float() / 255.0 - mean) / std}

    def check_preprocessing(self, expected: dict[str, Any], source: str) -> None:
        """Refuse weights trained with another eval pipeline (init=torchvision:...), naming the overrides."""
        have = {"crop_size": self.crop_size, "resize_size": self.resize_size, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std)}
        wrong = [f"task.{key}={expected[key]}".replace(" ", "") for key in have if not _same(have[key], expected[key])]
        if wrong:
            raise ConfigError(f"init={source} was trained with another pipeline: set {' '.join(wrong)}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(abs(x - y) <= 1e-6 for x, y in zip(a, b))
    return a == b
