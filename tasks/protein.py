"""Protein subcellular localization: which compartment a protein goes to, from its sequence.

Data (`task.dataset`, see tasks/protein_data.py): `scl2205` (default; ships inside the pinned PyPI package
p-scldata==2025.6.0, no download: train 15,183 / val 1,260 / test 2,631, 13 classes) or `flip_scl`
(FLIP's balanced split, 10 classes, downloaded once).

Featurizers (`task.featurizer`):
* `learned` (default): residue tokens (pad 0, 20 standard, X; rare B/U/Z/O -> X) into the
  `sequence_encoder` backbone (embedding + learned positions + blocks with `attention=` + pooling).
* `esm2_t6_8M`: frozen per-residue ESM-2 features (320-d; tasks/esm_features.py, cached on disk by
  sequence hash, weights downloaded once) into the `set_pooler` backbone (pooling + linear head),
  e.g. `python train.py task=protein task.featurizer=esm2_t6_8M model=set_pooler` or
  `experiment=protein_esm`. ESM-2 runs on CUDA when available, else on the CPU.

Length: sequences longer than `max_length` residues keep their first max_length - c_terminal and their
last c_terminal residues (targeting signals sit at both ends: N-terminal signal and transit peptides,
C-terminal PTS1, KDEL, GPI and tail anchors). Deterministic, so cached features stay valid. The paper
setting of the constrained-SWE work is `max_length=1022 c_terminal=0` (ESM-2's limit, N-terminal part).

Batches are drawn in random order (no length sorting) and padded to the longest sequence of the batch;
`padding_mask` is True at padding. `train_subset=K` trains on a seeded random K of the training split
(0 = all; validation and test stay whole). Metrics: accuracy (monitored), macro-F1, mean class accuracy;
the test split's majority-class rate is logged as the param `data.test_majority_rate`.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from attention import AttentionSpec
from attention.pooling import PoolingSpec
from backbones import BACKBONES
from lab.data import TensorDictDataset, pad_batch, seeded_subset
from lab.registry import AtLeast, ConfigError
from lab.runtime import select_device

from . import register_task
from .base import ModelSpec
from .classification import ClassificationTask
from .esm_features import MAX_RESIDUES, EsmFeatureCache
from .protein_data import (VOCAB_SIZE, ProteinSplits, check_scldata, flip_scl_csv, load_scl2205, prepare_flip_scl,
                           read_flip_csv, termini_slices, tokenize, truncate)

FEATURE_FOLDER = "protein_features"  # below the data root: <featurizer>/<sha1[:2]>/<sha1>.pt


class FeatureFileDataset(Dataset):
    """Per-residue feature files (n_i, C), read on access (a whole split does not fit in memory)."""

    def __init__(self, paths: list[Path], labels: Tensor):
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"features": torch.load(self.paths[index], weights_only=True), "labels": self.labels[index]}


def pad_collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Pad `tokens` (with 0) or `features` (with 0.0) to the batch's longest; padding_mask True = padding."""
    key = "tokens" if "tokens" in items[0] else "features"
    padded, padding_mask = pad_batch([item[key] for item in items])  # (B, N) or (B, N, C); (B, N)
    if key == "features":
        padded = padded.float()
    return {key: padded, "padding_mask": padding_mask, "labels": torch.stack([item["labels"] for item in items])}


@register_task("protein")
class Protein(ClassificationTask):
    def __init__(self, *, data_root: Path, download: bool, dataset: Literal["scl2205", "flip_scl"] = "scl2205",
                 featurizer: Literal["learned", "esm2_t6_8M"] = "learned", max_length: int = 512,
                 c_terminal: int = 64, train_subset: Annotated[int, AtLeast(0)] = 0):
        super().__init__(data_root=data_root, download=download)
        termini_slices(0, max_length, c_terminal)  # validates c_terminal against max_length
        if featurizer != "learned" and max_length > MAX_RESIDUES:
            raise ConfigError(f"featurizer {featurizer} takes at most {MAX_RESIDUES} residues: "
                              f"set task.max_length <= {MAX_RESIDUES}, got {max_length}")
        self.dataset, self.featurizer = dataset, featurizer
        self.max_length, self.c_terminal, self.train_subset = max_length, c_terminal, train_subset
        self.splits: dict[str, Dataset] = {}
        self.feature_dim = 0

    @classmethod
    def prepare(cls, root: Path, *, synthetic: bool = False, download: bool = True,
                dataset: str = "scl2205") -> None:
        """SCL2205: check the package data. FLIP scl: download + extract. synthetic: a learnable FLIP-format CSV."""
        if synthetic:
            from .synthetic_protein import write_synthetic_flip_scl

            write_synthetic_flip_scl(flip_scl_csv(root))
        elif dataset == "scl2205":
            check_scldata()
        else:
            prepare_flip_scl(Path(root), download)

    def setup(self) -> None:
        self.prepare(self.data_root, download=self.download, dataset=self.dataset)
        data = load_scl2205() if self.dataset == "scl2205" else read_flip_csv(flip_scl_csv(self.data_root))
        if self.train_subset:
            data = self._subset_train(data)
        self.class_names = data.class_names
        cut = {split: [truncate(s, self.max_length, self.c_terminal) for s in seqs]
               for split, seqs in data.sequences.items()}
        labels = {split: torch.tensor(values, dtype=torch.long) for split, values in data.labels.items()}
        if self.featurizer == "learned":
            self.splits = {split: TensorDictDataset(tokens=[torch.from_numpy(tokenize(s)) for s in seqs],
                                                    labels=labels[split])
                           for split, seqs in cut.items()}
            return
        cache = EsmFeatureCache(self.featurizer, self.data_root / FEATURE_FOLDER, download=self.download,
                                device=select_device("auto"))
        cache.ensure([s for seqs in cut.values() for s in seqs])
        self.splits = {split: FeatureFileDataset([cache.path(s) for s in seqs], labels[split])
                       for split, seqs in cut.items()}
        self.feature_dim = cache.load(cut["train"][0]).shape[1]

    def _subset_train(self, data: ProteinSplits) -> ProteinSplits:
        """A seeded random `train_subset` of the training split (in the original order)."""
        keep = seeded_subset(len(data.labels["train"]), self.train_subset)
        data.sequences["train"] = [data.sequences["train"][i] for i in keep.tolist()]
        data.labels["train"] = [data.labels["train"][i] for i in keep.tolist()]
        return data

    def datasets(self):
        return self.splits

    def collate(self, items):
        return pad_collate(items)

    def backbone_inputs(self) -> dict:
        if self.featurizer == "learned":
            return {"vocab_size": VOCAB_SIZE, "max_length": self.max_length}
        return {"input_dim": self.feature_dim}

    def build_model(self, model: ModelSpec, attention: AttentionSpec, pooling: PoolingSpec):
        needed = next(iter(self.backbone_inputs()))
        if needed not in inspect.signature(BACKBONES.get(model.name)).parameters:
            able = [n for n in BACKBONES.names() if needed in inspect.signature(BACKBONES.get(n)).parameters]
            what = "residue tokens" if self.featurizer == "learned" else "per-residue features"
            raise ConfigError(f"featurizer '{self.featurizer}' gives {what}, which backbone '{model.name}' does not "
                              f"take; use model={' or model='.join(able)}")
        return super().build_model(model, attention, pooling)

    def describe(self) -> dict:
        test_labels = self.splits["test"].labels
        majority = torch.bincount(test_labels, minlength=self.num_classes).max().item() / max(1, len(test_labels))
        return {**super().describe(), "data.num_classes": self.num_classes, "data.test_majority_rate": majority}
