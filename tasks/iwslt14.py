"""IWSLT'14 German→English translation (TED talks) with an encoder-decoder whose encoder attention is `attention=`.

Data (tasks/iwslt14_data.py): the 2014-01 release `de-en.tgz` (or its extracted `de-en/` folder) under
`<data.root>/iwslt14/`, split as fairseq's prepare-iwslt14.sh splits it: train 160,239 / valid 7,283 /
test 6,750 pairs (test = dev2010 + TEDX.dev2012 + tst2010-2012). The text splits are written once to
`iwslt14/prepared/`; a joint SentencePiece BPE model (`vocab_size`, 10k) is trained once on the training
text of both languages and cached in `iwslt14/spm/`. `task.source=en task.target=de` reverses the direction.

Training: label-smoothed cross-entropy (`label_smoothing` 0.1) on the next target token, padding ignored;
training pairs with more than `max_length` subword tokens on a side are left out.
Evaluation: `val/bleu` by greedy decoding of a fixed, evenly spaced `val_subset` of the validation pairs
(the monitor that selects `best.pt`); `test/bleu` by beam search (`beam_size` 5, `length_penalty` 1, at most
`max_len_a`·|source| + `max_len_b` tokens) from the best checkpoint. `bleu` is sacreBLEU on detokenized
text (its signature is the run tag `sacrebleu_signature`); `bleu_tok` is tokenized, lowercased BLEU, the
number the IWSLT'14 papers report (see tasks/bleu.py); `loss` / `perplexity` are teacher-forced, unsmoothed.
Every test translation is logged as the artifact `samples/translations_test.tsv` (source, reference,
hypothesis).
"""
from __future__ import annotations

import functools
import math
import shutil
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from attention import AttentionSpec
from attention.pooling import PoolingSpec
from backbones import BACKBONES, build_backbone
from backbones.decoding import beam_search, greedy_decode
from lab.data import TensorDictDataset
from lab.download import DataError, download as download_file, verify
from lab.registry import AtLeast, Below, ConfigError

from . import register_task
from .base import Evaluation, ModelSpec, Task
from .bleu import detokenized_bleu, tokenized_bleu
from .iwslt14_data import read_prepared, read_release, split_release, write_prepared
from .subword import BOS_ID, EOS_ID, PAD_ID, sentencepiece_model

SPLIT_FILES = {"train": "train", "val": "valid", "test": "test"}  # trainer split -> prepared file prefix


def evenly_spaced(size: int, count: int) -> list[int]:
    """`count` indices spread over range(size) (all of them when count is 0 or >= size)."""
    if count <= 0 or count >= size:
        return list(range(size))
    return [round(i * (size - 1) / (count - 1)) if count > 1 else 0 for i in range(count)]


def collate_pairs(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Source + EOS, BOS + target (decoder input) and target + EOS (labels), each padded with PAD."""
    source = pad_sequence([item["source"] for item in items], batch_first=True, padding_value=PAD_ID)  # (B, S)
    bos, eos = torch.tensor([BOS_ID]), torch.tensor([EOS_ID])
    inputs = pad_sequence([torch.cat([bos, item["target"]]) for item in items], batch_first=True,
                          padding_value=PAD_ID)  # (B, T)
    labels = pad_sequence([torch.cat([item["target"], eos]) for item in items], batch_first=True,
                          padding_value=PAD_ID)  # (B, T)
    return {"source_tokens": source, "source_padding_mask": source == PAD_ID, "target_tokens": inputs,
            "target_padding_mask": labels == PAD_ID, "labels": labels,
            "index": torch.stack([item["index"] for item in items])}


@register_task("iwslt14")
class Iwslt14(Task):
    monitor = "bleu"
    report_metrics = ("bleu", "bleu_tok")  # sacreBLEU's, and the tokenized one the literature reports
    folder = "iwslt14"
    archive = "de-en.tgz"
    url = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"  # fairseq's mirror of the WIT3 release

    def __init__(self, *, data_root: Path, download: bool, source: Literal["de", "en"] = "de",
                 target: Literal["de", "en"] = "en", vocab_size: Annotated[int, AtLeast(8)] = 10000,
                 max_length: Annotated[int, AtLeast(2)] = 256,
                 label_smoothing: Annotated[float, AtLeast(0.0), Below(1.0)] = 0.1,
                 val_subset: Annotated[int, AtLeast(0)] = 1000, beam_size: Annotated[int, AtLeast(1)] = 5,
                 length_penalty: float = 1.0, max_len_a: Annotated[float, AtLeast(0.0)] = 1.2,
                 max_len_b: Annotated[int, AtLeast(1)] = 10,
                 archive_md5: str | None = None):
        super().__init__(data_root=data_root, download=download)
        if source == target:
            raise ConfigError(f"task.source and task.target must differ, both are '{source}'")
        self.source, self.target, self.vocab_size = source, target, vocab_size
        self.max_length, self.label_smoothing, self.val_subset = max_length, label_smoothing, val_subset
        self.beam_size, self.length_penalty = beam_size, length_penalty
        self.max_len_a, self.max_len_b, self.archive_md5 = max_len_a, max_len_b, archive_md5
        self.splits: dict[str, TensorDictDataset] = {}
        self.text: dict[str, dict[str, list[str]]] = {}
        self.subword = None

    # -- data on disk ---------------------------------------------------------------------------
    @classmethod
    def prepare(cls, root: Path, *, synthetic: bool = False, download: bool = True, md5: str | None = None) -> None:
        """Find (or fetch) the release and write its text splits to iwslt14/prepared/, once."""
        folder = Path(root) / cls.folder
        prepared = folder / "prepared"
        if synthetic:
            from .synthetic_iwslt14 import write_synthetic_release

            write_synthetic_release(folder / cls.archive)
            shutil.rmtree(prepared, ignore_errors=True)
        if prepared.exists():
            return
        release = folder / "de-en" if (folder / "de-en").is_dir() else folder / cls.archive
        if not release.exists():
            if not download:
                raise DataError(cls._missing(folder))
            try:
                download_file(cls.url, release, md5)
            except DataError:
                raise DataError(cls._missing(folder)) from None
        elif md5 is not None and release.is_file():
            verify(release, md5)
        print(f"preparing IWSLT'14 de-en from {release} (Moses token counts for the length filter)", flush=True)
        write_prepared(split_release(read_release(release)), prepared)

    @classmethod
    def _missing(cls, folder: Path) -> str:
        return (f"IWSLT'14 de-en is missing: put the 2014-01 release {cls.archive} (WIT3, wit3.fbk.eu, 2014-01 "
                f"texts/de/en; also mirrored by fairseq at {cls.url}) or its extracted de-en/ folder in {folder}")

    def setup(self) -> None:
        self.prepare(self.data_root, download=self.download, md5=self.archive_md5)
        folder = self.data_root / self.folder
        text = read_prepared(folder / "prepared")
        self.subword = sentencepiece_model(text["train"]["de"] + text["train"]["en"], folder / "spm",
                                           vocab_size=self.vocab_size, model_type="bpe")
        self.text = {split: text[name] for split, name in SPLIT_FILES.items()}
        for split, pairs in self.text.items():
            source = self.subword.encode(pairs[self.source])
            target = self.subword.encode(pairs[self.target])
            if split == "train":
                keep = [i for i in range(len(source))
                        if len(source[i]) < self.max_length and len(target[i]) < self.max_length]
            elif split == "val":
                keep = evenly_spaced(len(source), self.val_subset)
            else:
                keep = list(range(len(source)))
            if split != "train":  # evaluation batches of similar lengths pad less
                keep.sort(key=lambda i: len(source[i]))
            self.splits[split] = TensorDictDataset(
                source=[torch.tensor(source[i] + [EOS_ID]) for i in keep],
                target=[torch.tensor(target[i]) for i in keep], index=torch.tensor(keep))

    def datasets(self):
        return self.splits

    def collate(self, items):
        return collate_pairs(items)

    def describe(self) -> dict:
        return {**super().describe(), "data.vocab_size": self.subword.vocab_size(),
                "data.train_pairs_prepared": len(self.text["train"][self.source])}

    # -- model ----------------------------------------------------------------------------------
    def build_model(self, model: ModelSpec, attention: AttentionSpec, pooling: PoolingSpec) -> nn.Module:
        if pooling.name is not None:
            raise ConfigError(f"task iwslt14 generates sequences and uses no pooling; drop pooling={pooling.name}")
        if not hasattr(BACKBONES.get(model.name), "decode_step"):
            able = [n for n in BACKBONES.names() if hasattr(BACKBONES.get(n), "decode_step")]
            raise ConfigError(f"task iwslt14 needs an encoder-decoder backbone; model={' or model='.join(able)}")
        return build_backbone(model.name, vocab_size=self.subword.vocab_size(), attention=attention,
                              **model.options)

    # -- training and evaluation ----------------------------------------------------------------
    @staticmethod
    def _logits(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model(source_tokens=batch["source_tokens"], target_tokens=batch["target_tokens"],
                     source_padding_mask=batch["source_padding_mask"],
                     target_padding_mask=batch["target_padding_mask"]).float()  # (B, T, vocab)

    def training_loss(self, model, batch, generator):
        logits = self._logits(model, batch)
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=PAD_ID,
                               label_smoothing=self.label_smoothing)

    def eval_step_for(self, split):
        return functools.partial(self._evaluate, beam_size=self.beam_size) if split == "test" else self.eval_step

    def eval_step(self, model, batch):
        return self._evaluate(model, batch, beam_size=1)

    @torch.no_grad()
    def _evaluate(self, model, batch, beam_size: int) -> dict[str, Tensor]:
        """Teacher-forced NLL and the decoded hypotheses (greedy for beam_size 1), padded to max_length."""
        labels = batch["labels"]
        nll = F.cross_entropy(self._logits(model, batch).transpose(1, 2), labels, ignore_index=PAD_ID,
                              reduction="none").sum(dim=1)  # (B,)
        source_lengths = (~batch["source_padding_mask"]).sum(dim=1)
        max_lengths = (self.max_len_a * source_lengths + self.max_len_b).long().clamp(max=self.max_length)
        arguments = (model, batch["source_tokens"], batch["source_padding_mask"], max_lengths)
        if beam_size == 1:
            hypotheses = greedy_decode(*arguments, bos=BOS_ID, eos=EOS_ID, pad=PAD_ID)
        else:
            hypotheses = beam_search(*arguments, beam_size=beam_size, length_penalty=self.length_penalty,
                                     bos=BOS_ID, eos=EOS_ID, pad=PAD_ID)
        hypotheses = F.pad(hypotheses, (0, self.max_length - hypotheses.shape[1]), value=PAD_ID)  # (B, max_length)
        return {"index": batch["index"], "hypothesis": hypotheses, "nll": nll, "tokens": (labels != PAD_ID).sum(dim=1)}

    def metrics(self, outputs, split):
        order = outputs["index"].argsort()
        indices = outputs["index"][order].tolist()
        hypotheses = [self.subword.decode([t for t in row.tolist() if t != PAD_ID])
                      for row in outputs["hypothesis"][order]]
        sources = [self.text[split][self.source][i] for i in indices]
        references = [self.text[split][self.target][i] for i in indices]
        bleu, signature = detokenized_bleu(hypotheses, references)
        loss = (outputs["nll"].sum() / outputs["tokens"].sum().clamp_min(1)).item()
        metrics = {"bleu": bleu, "bleu_tok": tokenized_bleu(hypotheses, references, self.target), "loss": loss,
                   "perplexity": math.exp(min(loss, 50.0))}
        table = "source\treference\thypothesis\n" + "".join(
            f"{s}\t{r}\t{h}\n" for s, r, h in zip(sources, references, hypotheses))
        return Evaluation(metrics=metrics, texts={f"translations_{split}.tsv": table},
                          tags={"sacrebleu_signature": signature})
