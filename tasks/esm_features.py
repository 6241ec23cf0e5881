"""Per-residue ESM-2 features (Lin et al. 2023, "Evolutionary-scale prediction of atomic-level protein
structure with a language model") through `fair-esm`, cached on disk by sequence hash.

    cache = EsmFeatureCache("esm2_t6_8M", data_root / "protein_features", download=True)
    paths = cache.ensure(sequences)        # runs ESM-2 only for sequences not cached yet
    features = cache.load(sequences[0])    # (n_residues, 320) float32

* Weights: `esm.pretrained.esm2_t6_8M_UR50D()` downloads them once into $TORCH_HOME/hub/checkpoints/
  (the model and its contact-regression file, as fair-esm expects both). Offline without them:
  one-line DataError naming the two files and where to put them.
* Sequences must already be cut to at most 1,022 residues (ESM-2 has 1,024 positions including
  BOS and EOS). Batches are padded; BOS and EOS are stripped per sequence (rows 1..n of each
  sequence, not a batched [:, 1:-1], which would keep EOS and padding for the shorter ones).
  Contacts are not requested (the contact head is never run).
* Cache: <root>/<featurizer>/<sha1[:2]>/<sha1>.pt, one float16 (n, C) tensor per sequence (half the
  disk of float32; ESM-2 outputs are layer-normalised, well inside float16's range), written to a
  temporary file and renamed, so an interrupted run never leaves a truncated entry. Loaded with
  `weights_only=True`.
* `ESM_LOADERS` maps a featurizer name to a factory `(download) -> (model, alphabet)`; tests put a
  tiny randomly initialised `esm.ESM2` there to run the whole path offline.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from lab.download import DataError
from lab.files import written_whole

MAX_RESIDUES = 1022
ESM_CHECKPOINTS = {"esm2_t6_8M": "esm2_t6_8M_UR50D"}
WEIGHTS_URL = "https://dl.fbaipublicfiles.com/fair-esm"


def weight_files(checkpoint: str) -> list[tuple[str, Path]]:
    """(url, local path) of the two files fair-esm loads for an ESM-2 checkpoint."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return [(f"{WEIGHTS_URL}/models/{checkpoint}.pt", folder / f"{checkpoint}.pt"),
            (f"{WEIGHTS_URL}/regression/{checkpoint}-contact-regression.pt",
             folder / f"{checkpoint}-contact-regression.pt")]


def load_pretrained(checkpoint: str, download: bool) -> tuple[nn.Module, object]:
    """fair-esm's pretrained model and alphabet; DataError with the manual fix if it cannot be had."""
    import esm

    files = weight_files(checkpoint)
    fix = ("download " + " and ".join(url for url, _ in files)
           + f" into {files[0][1].parent}/ (set TORCH_HOME to use another folder)")
    if not download and not all(path.is_file() for _, path in files):
        raise DataError(f"ESM-2 weights {checkpoint} are not cached and data.download=false: {fix}")
    try:
        return getattr(esm.pretrained, checkpoint)()
    except Exception as error:  # fair-esm turns HTTP errors into bare Exceptions; network errors are OSErrors
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"could not load ESM-2 weights {checkpoint} ({reason}); {fix}") from None


ESM_LOADERS: dict[str, Callable[[bool], tuple[nn.Module, object]]] = {
    name: (lambda download, checkpoint=checkpoint: load_pretrained(checkpoint, download))
    for name, checkpoint in ESM_CHECKPOINTS.items()
}


def sequence_key(sequence: str) -> str:
    return hashlib.sha1(sequence.encode("ascii")).hexdigest()


def length_batches(sequences: list[str], tokens_per_batch: int) -> list[list[str]]:
    """Group sequences (longest first) so that each padded batch holds at most `tokens_per_batch` tokens."""
    batches: list[list[str]] = []
    for sequence in sorted(sequences, key=len, reverse=True):
        batch = batches[-1] if batches else None
        if batch and (len(batch) + 1) * (len(batch[0]) + 2) <= tokens_per_batch:  # batch[0] is its longest
            batch.append(sequence)
        else:
            batches.append([sequence])
    return batches


class EsmFeatureCache:
    def __init__(self, featurizer: str, root: Path, *, download: bool = True, device: torch.device | None = None,
                 tokens_per_batch: int = 4096):
        if featurizer not in ESM_LOADERS:
            raise ValueError(f"unknown ESM featurizer '{featurizer}'; valid choices: {', '.join(ESM_LOADERS)}")
        self.featurizer, self.folder = featurizer, Path(root) / featurizer
        self.download, self.tokens_per_batch = download, tokens_per_batch
        self.device = device or torch.device("cpu")
        self._model: nn.Module | None = None
        self._alphabet = None

    def path(self, sequence: str) -> Path:
        key = sequence_key(sequence)
        return self.folder / key[:2] / f"{key}.pt"

    def load(self, sequence: str) -> Tensor:
        return torch.load(self.path(sequence), weights_only=True).float()

    def ensure(self, sequences: list[str]) -> list[Path]:
        """Compute and cache the features of every sequence not cached yet; the cache paths, in order."""
        missing = [s for s in dict.fromkeys(sequences) if not self.path(s).is_file()]
        if missing:
            print(f"computing {self.featurizer} features of {len(missing)} sequences into {self.folder} "
                  "(once; an interrupted run continues where it stopped)", flush=True)
        done, last_report = 0, time.monotonic()
        for batch in length_batches(missing, self.tokens_per_batch):
            for sequence, features in zip(batch, self.embed(batch)):
                self._save(features, self.path(sequence))
            done += len(batch)
            if time.monotonic() - last_report > 60:
                print(f"  {done}/{len(missing)} sequences", flush=True)
                last_report = time.monotonic()
        return [self.path(s) for s in sequences]

    @torch.no_grad()
    def embed(self, sequences: list[str]) -> list[Tensor]:
        """Per-residue features (n_i, C) float32 of one padded batch, BOS/EOS stripped per sequence."""
        too_long = [len(s) for s in sequences if len(s) > MAX_RESIDUES]
        if too_long:
            raise ValueError(f"ESM-2 takes at most {MAX_RESIDUES} residues, got a sequence of {max(too_long)}")
        model, alphabet = self._load_model()
        _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(sequences)])
        last = model.num_layers
        output = model(tokens.to(self.device), repr_layers=[last], return_contacts=False)
        hidden = output["representations"][last].float().cpu()  # (B, 1 + max_n + 1, C)
        start = int(alphabet.prepend_bos)
        return [hidden[i, start:start + len(s)] for i, s in enumerate(sequences)]

    def _load_model(self):
        if self._model is None:
            model, self._alphabet = ESM_LOADERS[self.featurizer](self.download)
            self._model = model.eval().to(self.device)
        return self._model, self._alphabet

    @staticmethod
    def _save(features: Tensor, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(path) as partial:
            torch.save(features.to(torch.float16, copy=True), partial)
