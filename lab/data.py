"""Batches in a reproducible order: the sampler that makes resumed runs repeat the same batches."""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .runtime import step_seed


class TensorDictDataset(Dataset):
    """In-memory examples: item i is {name: values[i]} for each named tensor or list of tensors
    (variable-length sequences); all of the same length."""

    def __init__(self, **tensors: torch.Tensor | list[torch.Tensor]):
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of different lengths: { {k: len(t) for k, t in tensors.items()} }")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getattr__(self, name: str):  # dataset.labels -> the whole `labels` tensor
        tensors = self.__dict__.get("tensors", {})
        if name in tensors:
            return tensors[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or tensor '{name}'")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


def seeded_subset(size: int, count: int, seed: int = 0) -> torch.Tensor:
    """`count` of range(size) drawn without replacement, in increasing order (all when count is 0 or >= size):
    the `train_subset` of a task, the same for every run."""
    if count <= 0 or count >= size:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) index tensors, both sorted: round(fraction * count) of every class held out, drawn
    with `seed` (a validation split carved from a training split)."""
    generator = torch.Generator().manual_seed(seed)
    kept, held_out = [], []
    for label in labels.unique():
        members = (labels == label).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        count = round(fraction * len(members))
        held_out.append(members[:count])
        kept.append(members[count:])
    return torch.cat(kept).sort().values, torch.cat(held_out).sort().values


def pad_batch(values: list[torch.Tensor], padding_value: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length (n_i, ...) tensors -> (B, N, ...) padded to the longest and a (B, N) mask, True = padding."""
    lengths = torch.tensor([len(v) for v in values])
    padded = torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=padding_value)
    return padded, torch.arange(padded.shape[1])[None, :] >= lengths[:, None]


class EpochBatchSampler(Sampler[list[int]]):
    """Index batches for one epoch: a permutation seeded by (seed, epoch), sharded across ranks,
    starting at batch `start` (to resume mid-epoch)."""

    def __init__(self, size: int, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                 start: int = 0, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.shuffle = size, batch_size, shuffle
        self.seed, self.epoch, self.start = seed, epoch, start
        self.rank, self.world_size = rank, world_size

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(step_seed(self.seed, self.epoch, -1))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.world_size > 1:
            per_rank = math.ceil(self.size / self.world_size)
            order = (order * 2)[: per_rank * self.world_size] if self.shuffle else order
            order = order[self.rank::self.world_size]
        return order

    def __iter__(self) -> Iterator[list[int]]:
        order = self._indices()
        for begin in range(self.start * self.batch_size, len(order), self.batch_size):
            yield order[begin:begin + self.batch_size]

    def __len__(self) -> int:
        return max(0, math.ceil(len(self._indices()) / self.batch_size) - self.start)


def batches_per_epoch(size: int, batch_size: int, world_size: int = 1) -> int:
    return math.ceil(math.ceil(size / world_size) / batch_size)


def make_loader(dataset: Dataset, sampler: EpochBatchSampler, collate, num_workers: int,
                device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch
