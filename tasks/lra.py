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

from pathlib import Path

import torch

from lab.data import TensorDictDataset
from lab.download import DataError

from . import register_task
from .listops import BENCHMARK, SPLITS, ListOpsSetting, VOCABULARY, generate, read_tsv, tokenize, tsv_path, write_tsv
from .lra_release import ARCHIVE, extract_folder, find_folder
from .token_classification import TokenClassificationTask

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
        with the benchmark setting (~2 minutes) and written in the release's format."""
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
    def write(root: Path, setting: ListOpsSetting, seed: int = 0) -> None:
        for split, rows in generate(setting, seed).items():
            write_tsv(tsv_path(Path(root) / "lra_release" / LISTOPS_FOLDER, split), rows)

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
            tokens = [torch.tensor(tokenize(source)[:self.max_length], dtype=torch.uint8) for source, _ in rows]
            labels = torch.tensor([target for _, target in rows])
            if split == "train":
                subset = self.subset_train(tokens=tokens, labels=labels)
                tokens, labels = subset["tokens"], subset["labels"]
            self.splits[split] = TensorDictDataset(tokens=tokens, labels=labels)
