"""IMDB movie-review sentiment (Maas et al. 2011): positive or negative, from SentencePiece pieces.

Data (tasks/imdb_data.py): `aclImdb_v1.tar.gz` from Stanford (md5-verified), its labelled
`{train,test}/{pos,neg}` reviews only (`train/unsup` is unlabelled and ignored), `<br />` breaks
replaced by spaces. Splits: train 25k minus a seeded, stratified `val_fraction` (default 10%: 22,500 /
2,500), test 25k.

Tokens: a SentencePiece model (`tokenizer` unigram or bpe, `vocab_size` 16k) trained on the training
split's text (validation held out), cached in `<data.root>/imdb_spm/` under a name carrying a digest of
that text and of the options (tasks/subword.py): trained once, retrained only when they change.
Reviews longer than `max_length` pieces (512) keep their first `max_length - tail_length` and last
`tail_length` pieces (`tail_length=0`: the head only; head + tail truncation keeps a review's closing
verdict, e.g. `tail_length=128`). Model: `sequence_encoder`. Metric: accuracy (2 classes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import torch

from lab.data import stratified_split
from lab.registry import Above, AtLeast, Below, ConfigError

from . import register_task
from .imdb_data import CLASSES, prepare_aclimdb, read_reviews
from .subword import sentencepiece_model
from .token_classification import TokenClassificationTask, token_tensor

SPM_FOLDER = "imdb_spm"


def head_and_tail(ids: list[int], max_length: int, tail_length: int) -> list[int]:
    if len(ids) <= max_length:
        return ids
    return ids[:max_length - tail_length] + (ids[len(ids) - tail_length:] if tail_length else [])


@register_task("imdb")
class Imdb(TokenClassificationTask):
    class_names = list(CLASSES)

    def __init__(self, *, data_root: Path, download: bool, vocab_size: Annotated[int, AtLeast(8)] = 16000,
                 tokenizer: Literal["unigram", "bpe"] = "unigram", max_length: int = 512, tail_length: int = 0,
                 val_fraction: Annotated[float, Above(0.0), Below(1.0)] = 0.1, split_seed: int = 0,
                 train_subset: int = 0):
        super().__init__(data_root=data_root, download=download, max_length=max_length, train_subset=train_subset)
        if not 0 <= tail_length < max_length:
            raise ConfigError(f"task.tail_length must be in [0, max_length = {max_length}), got {tail_length}")
        self.vocab_size, self.tokenizer, self.tail_length = vocab_size, tokenizer, tail_length
        self.val_fraction, self.split_seed = val_fraction, split_seed

    @classmethod
    def prepare(cls, root: Path, *, synthetic: bool = False, download: bool = True) -> None:
        if synthetic:
            from .synthetic_imdb import write_synthetic_aclimdb

            write_synthetic_aclimdb(root)
            return
        prepare_aclimdb(root, download)

    def setup(self) -> None:
        self.prepare(self.data_root, download=self.download)
        texts, labels = read_reviews(self.data_root, "train")
        train_labels = torch.tensor(labels)
        train_idx, val_idx = stratified_split(train_labels, self.val_fraction, self.split_seed)
        train_texts = [texts[i] for i in train_idx.tolist()]
        processor = sentencepiece_model(train_texts, self.data_root / SPM_FOLDER, vocab_size=self.vocab_size,
                                        model_type=self.tokenizer)
        self.vocab_size = processor.vocab_size()  # a small corpus supports fewer pieces than asked for
        test_texts, test_labels = read_reviews(self.data_root, "test")
        parts = {"train": (train_texts, train_labels[train_idx]),
                 "val": ([texts[i] for i in val_idx.tolist()], train_labels[val_idx]),
                 "test": (test_texts, torch.tensor(test_labels))}
        self.splits = {split: self.split_dataset(split, [token_tensor(head_and_tail(ids, self.max_length,
                                                                                 self.tail_length), self.vocab_size)
                                                          for ids in processor.encode(split_texts)], split_labels)
                       for split, (split_texts, split_labels) in parts.items()}
