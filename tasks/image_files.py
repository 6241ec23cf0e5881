"""Image files decoded and cropped in the DataLoader's workers: the standard ImageNet pipelines.

    training:   RandomResizedCrop(crop_size, scale=(min_crop_scale, 1), ratio=(3/4, 4/3)) + horizontal flip
    evaluation: resize the shorter side to resize_size, center crop crop_size (224 from 256 by default)

Items are {"images": uint8 (3, crop, crop), "labels": int64}; converting to float and normalising happens
on the device (the task's `transform`), so batches cross to the GPU as bytes. Training crops are drawn
from a generator seeded by (run seed, epoch, example index) — `set_epoch` tells the dataset which epoch
the trainer is in — so a resumed run repeats the crops of the uninterrupted one, with any worker count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from lab.download import DataError
from lab.runtime import step_seed

Interpolation = Literal["bilinear", "bicubic"]
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Pipeline:
    crop_size: int = 224
    resize_size: int = 256
    min_crop_scale: float = 0.08
    interpolation: Interpolation = "bilinear"


def decode(path: str) -> Tensor:
    """uint8 (3, H, W) RGB from an image file, read by PIL as torchvision's ImageFolder does (greyscale, CMYK
    and palette images converted; torchvision.io's decoders are deprecated since 0.29)."""
    try:
        with Image.open(path) as image:
            pixels = np.array(image.convert("RGB"))  # (H, W, 3) uint8
    except OSError as error:  # includes PIL.UnidentifiedImageError
        raise DataError(f"cannot decode image {path} ({str(error).splitlines()[0]})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


def random_resized_crop_box(height: int, width: int, min_scale: float, generator: torch.Generator,
                            ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a uniform fraction in [min_scale, 1] of the area with a log-uniform
    aspect ratio in `ratio` (Inception-style, as torchvision's RandomResizedCrop draws it); after 10 failed
    draws, the largest center crop within `ratio`."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        draws = torch.rand(2, generator=generator).tolist()
        target_area = area * (min_scale + (1 - min_scale) * draws[0])
        aspect = math.exp(log_low + (log_high - log_low) * draws[1])
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ImageFiles(Dataset):
    """(path, label) samples through the training (`train=True`) or the evaluation pipeline."""

    def __init__(self, samples: list[tuple[str, int]], pipeline: Pipeline, *, train: bool):
        self.samples, self.pipeline, self.train = samples, pipeline, train
        self.epoch, self.seed = 0, 0

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.epoch, self.seed = epoch, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        path, label = self.samples[index]
        image = decode(path)  # (3, H, W) uint8
        p = self.pipeline
        if self.train:
            generator = torch.Generator().manual_seed(step_seed(self.seed, self.epoch, index))
            top, left, h, w = random_resized_crop_box(image.shape[1], image.shape[2], p.min_crop_scale, generator)
            image = TF.resized_crop(image, top, left, h, w, [p.crop_size, p.crop_size], p.interpolation,
                                    antialias=True)
            if bool(torch.rand(1, generator=generator) < 0.5):
                image = TF.horizontal_flip(image)
        else:
            image = TF.center_crop(TF.resize(image, [p.resize_size], p.interpolation, antialias=True),
                                   [p.crop_size, p.crop_size])
        return {"images": image, "labels": torch.tensor(label, dtype=torch.long)}
