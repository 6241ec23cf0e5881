"""What every token-sequence classification task shares (IMDB and the Long Range Arena tasks).

Examples are 1-D tensors of token ids (uint8 or int16 on disk and in memory, to keep 100k sequences of
4,000 bytes small), padded per batch to the longest member with `padding_mask` True at padding; the
model is the `sequence_encoder` backbone (or `dual_encoder` for pairs) with the task's vocabulary and
maximum length. `train_subset=K` trains on a seeded random K of the training split (0 = all), for
CPU presets; validation and test stay whole. The test split's majority-class rate (the accuracy of
always answering its most frequent class) is logged as `data.test_majority_rate`, the chance level a
result must beat.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from lab.data import TensorDictDataset, pad_batch, seeded_subset
from lab.registry import ConfigError

from .classification import ClassificationTask


def token_tensor(ids: list[int] | bytes, vocab_size: int) -> Tensor:
    """Token ids in the smallest integer type that holds the vocabulary (the collate makes them long)."""
    dtype = torch.uint8 if vocab_size <= 256 else torch.int16 if vocab_size <= 1 << 15 else torch.int32
    return torch.tensor(list(ids), dtype=dtype)


def majority_rate(labels: Tensor, num_classes: int) -> float:
    return torch.bincount(labels, minlength=num_classes).max().item() / max(1, len(labels))


class TokenClassificationTask(ClassificationTask):
    vocab_size: ClassVar[int]

    def __init__(self, *, data_root: Path, download: bool, max_length: int, train_subset: int = 0):
        super().__init__(data_root=data_root, download=download)
        if max_length < 1:
            raise ConfigError(f"task.max_length must be >= 1, got {max_length}")
        if train_subset < 0:
            raise ConfigError(f"task.train_subset must be >= 0 (0 = the whole training split), got {train_subset}")
        self.max_length, self.train_subset = max_length, train_subset
        self.splits: dict[str, TensorDictDataset] = {}

    def datasets(self):
        return self.splits

    def kept(self, split: str, size: int) -> Tensor:
        """Indices of the examples of `split` (of `size`) that are used: the training split is cut to a seeded
        `train_subset`, the others stay whole."""
        return seeded_subset(size, self.train_subset if split == "train" else 0)

    def split_dataset(self, split: str, tokens: list[Tensor], labels: Tensor) -> TensorDictDataset:
        """The dataset of one split, cut by `kept`."""
        keep = self.kept(split, len(labels))
        return TensorDictDataset(tokens=[tokens[i] for i in keep.tolist()], labels=labels[keep])

    def collate(self, items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        tokens, padding_mask = pad_batch([item["tokens"] for item in items])  # (B, N), (B, N)
        return {"tokens": tokens.long(), "padding_mask": padding_mask,
                "labels": torch.stack([item["labels"] for item in items])}

    def backbone_inputs(self) -> dict:
        return {"vocab_size": self.vocab_size, "max_length": self.max_length}

    def describe(self) -> dict:
        return {**super().describe(), "data.num_classes": self.num_classes,
                "data.test_majority_rate": majority_rate(self.splits["test"].labels, self.num_classes)}
