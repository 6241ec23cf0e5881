"""The Long Range Arena (Tay et al. 2021) tasks, as the PyTorch harness of the papers runs them.

| task | input | classes | splits |
| --- | --- | --- | --- |
| `lra_listops` | ListOps trees, 500-2,000 tokens (tasks/listops.py) | 10 | 96k / 2k / 2k |
| `lra_text` | IMDB reviews as UTF-8 bytes, first 4,000 | 2 | 25k / test / 25k (test doubles as val) |
| `lra_retrieval` | AAN paper pairs as bytes, 4,000 per document: does one cite the other | 2 | 147,086 / 18,090 / 17,437 |
| `lra_image` | CIFAR-10 in grayscale, 1,024 pixel intensities | 10 | 45k / 5k / 10k |
| `lra_pathfinder` | Pathfinder-32 hard (`curv_contour_length_14`), 1,024 pixels: are the two dots joined | 2 | 160k / 20k / 20k |

Data: the release archive (tasks/lra_release.py) for ListOps (else generated exactly), AAN and
Pathfinder; IMDB's own archive (tasks/imdb_data.py) for text; the CIFAR-10 archive (tasks/cifar.py)
for image. Every task writes a synthetic stand-in in the release's own layout with `--synthetic`.
Token id 0 is padding where sequences vary in length (ListOps, bytes: a byte b is id b + 1); pixel
tasks have no padding and use the 256 intensities as ids. Batches are padded to their longest
member and masked, which gives the same outputs as the harness's fixed-length padding with a mask.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from backbones import BACKBONES
from backbones.dual_encoder import DualEncoder
from lab.data import pad_batch
from lab.download import DataError
from lab.registry import AtLeast, ConfigError

from . import register_task
from .aan import FILES as AAN_FILES, read_pairs
from .cifar import Cifar10
from .imdb import Imdb
from .imdb_data import CLASSES as IMDB_CLASSES, read_reviews
from .listops import (BENCHMARK, SPLITS, VOCABULARY, ListOpsSetting, read_tsv, tokenize, tsv_path,
                      write_generated)
from .lra_release import ARCHIVE, extract_folder, find_folder
from .pathfinder import load_cached
from .token_classification import TokenClassificationTask, token_tensor

LISTOPS_FOLDER = "listops-1000"
# The synthetic ListOps: the same generator with shallow, short trees, so a CPU learns it in minutes;
# an example still has to be evaluated (nested operators, 2-5 arguments).
LISTOPS_SYNTHETIC = ListOpsSetting(max_depth=4, max_args=5, min_length=20, max_length=100, sizes=(6000, 500, 500))


@register_task("lra_listops")
class LraListops(TokenClassificationTask):
    vocab_size = len(VOCABULARY)
    class_names = [str(digit) for digit in range(10)]

    def __init__(self, *, data_root: Path, download: bool, max_length: int = 2000, train_subset: int = 0):
        super().__init__(data_root=data_root, download=download, max_length=max_length, train_subset=train_subset)

    @classmethod
    def prepare(cls, root: Path, *, synthetic: bool = False, download: bool = True) -> None:
        """The release's TSVs if present (or in a local copy of the archive); otherwise generated once
        with the benchmark setting (~3 minutes of CPU) and written in the release's format."""
        root = Path(root)
        if synthetic:
            cls.write(root, LISTOPS_SYNTHETIC)
            return
        if cls.folder(root) is not None:
            return
        if (root / ARCHIVE).exists():
            extract_folder(root, LISTOPS_FOLDER, download=False, what="lra_listops")
            if cls.folder(root) is not None:
                return
        print(f"generating ListOps ({' / '.join(map(str, BENCHMARK.sizes))} trees of {BENCHMARK.min_length}-"
              f"{BENCHMARK.max_length} tokens) into {root / 'lra_release' / LISTOPS_FOLDER}", flush=True)
        cls.write(root, BENCHMARK)

    @staticmethod
    def write(root: Path, setting: ListOpsSetting) -> None:
        write_generated(Path(root) / "lra_release" / LISTOPS_FOLDER, setting)

    @staticmethod
    def folder(root: Path) -> Path | None:
        return find_folder(root, LISTOPS_FOLDER, required=tuple(tsv_path(".", s).name for s in SPLITS))

    def setup(self) -> None:
        self.prepare(self.data_root, download=self.download)
        folder = self.folder(self.data_root)
        if folder is None:
            raise DataError(f"no {LISTOPS_FOLDER}/basic_{{train,val,test}}.tsv below {self.data_root}")
        self.splits = {}
        for split in SPLITS:
            rows = read_tsv(tsv_path(folder, split))
            tokens = [token_tensor(tokenize(source)[:self.max_length], self.vocab_size) for source, _ in rows]
            self.splits[split] = self.split_dataset(split, tokens, torch.tensor([target for _, target in rows]))


def byte_tokens(text: str | bytes, max_length: int) -> torch.Tensor:
    """UTF-8 bytes b -> ids b + 1 (0 is padding), the first `max_length` of them; int16 (N,)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return torch.from_numpy(np.frombuffer(data[:max_length], dtype=np.uint8).astype(np.int16) + 1)


@register_task("lra_text")
class LraText(TokenClassificationTask):
    """IMDB at byte level: the reviews' raw UTF-8 bytes (markup kept, as tfds serves them), the first
    `max_length` (4,000 in LRA). As in LRA, the test split doubles as the validation split."""

    vocab_size = 257
    class_names = list(IMDB_CLASSES)

    def __init__(self, *, data_root: Path, download: bool, max_length: int = 4000, train_subset: int = 0):
        super().__init__(data_root=data_root, download=download, max_length=max_length, train_subset=train_subset)

    @classmethod
    def prepare(cls, root: Path, *, synthetic: bool = False, download: bool = True) -> None:
        Imdb.prepare(root, synthetic=synthetic, download=download)

    def setup(self) -> None:
        self.prepare(self.data_root, download=self.download)
        parts = {split: read_reviews(self.data_root, split, clean=False) for split in ("train", "test")}
        for split, (texts, labels) in parts.items():
            self.splits[split] = self.split_dataset(split, [byte_tokens(t, self.max_length) for t in texts],
                                                    torch.tensor(labels))
        self.splits["val"] = self.splits["test"]

    def describe(self) -> dict:
        return {**super().describe(), "data.val_split": "test"}


class PairDataset(Dataset):
    """Document pairs over one store of distinct documents: item i is (tokens, tokens_2, label)."""

    def __init__(self, documents: list[torch.Tensor], first: torch.Tensor, second: torch.Tensor, labels: torch.Tensor):
        self.documents, self.first, self.second, self.labels = documents, first, second, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.documents[self.first[index]], "tokens_2": self.documents[self.second[index]],
                "labels": self.labels[index]}


@register_task("lra_retrieval")
class LraRetrieval(TokenClassificationTask):
    """AAN citation pairs at byte level, `max_length` bytes per document (4,000 in LRA), classified by
    the `dual_encoder` backbone (one shared encoder, head on [u, v, u*v, u-v])."""

    vocab_size = 257
    class_names = ["unrelated", "cites"]
    folder_name = "tsv_data"

    def __init__(self, *, data_root: Path, download: bool, max_length: int = 4000, train_subset: int = 0):
        super().__init__(data_root=data_root, download=download, max_length=max_length, train_subset=train_subset)

    @classmethod
    def prepare(cls, root: Path, *, synthetic: bool = False, download: bool = True) -> None:
        root = Path(root)
        if synthetic:
            from .synthetic_aan import write_synthetic_aan

            write_synthetic_aan(root / "lra_release" / cls.folder_name)
        elif cls.folder(root) is None:
            extract_folder(root, cls.folder_name, download=download, what="lra_retrieval")

    @classmethod
    def folder(cls, root: Path) -> Path | None:
        return find_folder(root, cls.folder_name, required=tuple(AAN_FILES.values()))

    def setup(self) -> None:
        self.prepare(self.data_root, download=self.download)
        folder = self.folder(self.data_root)
        if folder is None:
            raise DataError(f"no {self.folder_name}/{AAN_FILES['train']} (and eval, test) below {self.data_root}")
        texts, splits = read_pairs(folder, self.max_length)
        documents = [byte_tokens(text, self.max_length) for text in texts]
        for split, pairs in splits.items():
            keep = self.kept(split, len(pairs.labels))
            self.splits[split] = PairDataset(documents, torch.tensor(pairs.first)[keep],
                                             torch.tensor(pairs.second)[keep], torch.tensor(pairs.labels)[keep])

    def collate(self, items):
        tokens, padding_mask = pad_batch([item["tokens"] for item in items])  # (B, N1)
        tokens_2, padding_mask_2 = pad_batch([item["tokens_2"] for item in items])  # (B, N2)
        return {"tokens": tokens.long(), "padding_mask": padding_mask, "tokens_2": tokens_2.long(),
                "padding_mask_2": padding_mask_2, "labels": torch.stack([item["labels"] for item in items])}

    def build_model(self, model, attention, pooling):
        if not issubclass(BACKBONES.get(model.name), DualEncoder):
            raise ConfigError(f"lra_retrieval classifies document pairs: use model=dual_encoder, not {model.name}")
        return super().build_model(model, attention, pooling)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB -> (N, H * W) uint8 as tf.image.rgb_to_grayscale computes it for uint8 images:
    weights (0.2989, 0.5870, 0.1140) on [0, 1] values, back to uint8 by scaling with 255.5 and truncating."""
    weights = torch.tensor([0.2989, 0.5870, 0.1140]).view(1, 3, 1, 1)
    gray = (images.float() / 255.0 * weights).sum(1)  # (N, H, W) in [0, 1]
    return (gray * 255.5).to(torch.uint8).flatten(1)


@register_task("lra_image")
class LraImage(TokenClassificationTask):
    """CIFAR-10 in grayscale as 1,024 pixel tokens (intensities 0-255 as ids, no normalisation, no
    augmentation), read with the cifar10 task's reader and split: 45k / 5k (seeded) / 10k."""

    vocab_size = 256

    def __init__(self, *, data_root: Path, download: bool, val_fraction: float = 0.1, split_seed: int = 0,
                 train_subset: int = 0):
        super().__init__(data_root=data_root, download=download, max_length=32 * 32, train_subset=train_subset)
        self.cifar = Cifar10(data_root=data_root, download=download, val_fraction=val_fraction, augment=False,
                             split_seed=split_seed)

    @classmethod
    def prepare(cls, root: Path, *, synthetic: bool = False, download: bool = True,
                stand_in: Literal["glyphs", "digits"] = "glyphs") -> None:
        """The cifar10 task's data, or with `synthetic` one of its stand-ins (glyphs, or real digits)."""
        Cifar10.prepare(root, synthetic=synthetic, download=download, stand_in=stand_in)

    def setup(self) -> None:
        self.cifar.setup()
        self.class_names = self.cifar.class_names
        for split, dataset in self.cifar.datasets().items():
            self.splits[split] = self.split_dataset(split, list(grayscale(dataset.images)), dataset.labels)


Difficulty = Literal["curv_contour_length_14", "curv_contour_length_9", "curv_baseline"]


def max_pooled(pixels: torch.Tensor, k: int) -> torch.Tensor:
    """(N, S * S) uint8 square images, row-major -> (N, (S / k)^2): the brightest pixel of each k x k block."""
    if k == 1:
        return pixels
    side = math.isqrt(pixels.shape[1])
    blocks = pixels.reshape(-1, side // k, k, side // k, k)  # (N, rows, k, cols, k)
    return blocks.amax(dim=(2, 4)).reshape(len(pixels), -1)


@register_task("lra_pathfinder")
class LraPathfinder(TokenClassificationTask):
    """Pathfinder-32, `difficulty` curv_contour_length_14 (LRA's), 1,024 pixel tokens. Split as the PyTorch
    LRA harness of Nyströmformer, Skyformer and LOTFormer does: all usable images shuffled, then 80% /
    10% / 10% (160k / 20k / 20k); their shuffle is unseeded, ours is seeded (`split_seed`). `downsample` k > 1
    (CPU presets only, not LRA) max-pools k x k pixel blocks: (32 / k)^2 tokens, a dashed curve stays one."""

    vocab_size = 256
    class_names = ["apart", "joined"]

    def __init__(self, *, data_root: Path, download: bool,
                 difficulty: Difficulty = "curv_contour_length_14", split_seed: int = 0, train_subset: int = 0,
                 downsample: Literal[1, 2, 4] = 1):
        side = 32 // downsample
        super().__init__(data_root=data_root, download=download, max_length=side * side, train_subset=train_subset)
        self.difficulty, self.split_seed, self.downsample = difficulty, split_seed, downsample

    @classmethod
    def prepare(cls, root: Path, *, synthetic: bool = False, download: bool = True,
                difficulty: Difficulty = "curv_contour_length_14", count: Annotated[int, AtLeast(10)] = 2000) -> None:
        """The release's `difficulty` folder, or with `synthetic` `count` stand-in images drawn at it."""
        root = Path(root)
        if synthetic:
            from .synthetic_pathfinder import SHAPES, write_synthetic_pathfinder

            write_synthetic_pathfinder(root / "lra_release" / "pathfinder32" / difficulty, count=count,
                                       **SHAPES[difficulty])
        elif cls.folder(root, difficulty) is None:
            extract_folder(root, f"pathfinder32/{difficulty}", download=download, what="lra_pathfinder")

    @staticmethod
    def folder(root: Path, difficulty: str) -> Path | None:
        found = find_folder(root, "pathfinder32", required=(f"{difficulty}/metadata",))
        return None if found is None else found / difficulty

    def setup(self) -> None:
        self.prepare(self.data_root, download=self.download, difficulty=self.difficulty)
        folder = self.folder(self.data_root, self.difficulty)
        if folder is None:
            raise DataError(f"no pathfinder32/{self.difficulty}/metadata below {self.data_root}")
        pixels, labels = load_cached(folder)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        train_end, val_end = int(0.8 * len(order)), int(0.9 * len(order))
        pixels, labels = max_pooled(torch.from_numpy(pixels), self.downsample), torch.from_numpy(labels)
        for split, part in (("train", order[:train_end]), ("val", order[train_end:val_end]),
                            ("test", order[val_end:])):
            self.splits[split] = self.split_dataset(split, list(pixels[part]), labels[part])
