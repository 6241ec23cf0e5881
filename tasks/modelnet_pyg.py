"""torch_geometric's `ModelNet` dataset, made robust, turned into dense point tensors.

Imported lazily by `tasks/modelnet.py` (torch_geometric takes ~4 s to import). Changes to PyG's class:

* meshes are read with the tolerant `tasks.off_format.read_off` (PyG's reader rejects comments);
* the processed cache lives in `processed_<num_points>[_normals]/`, so changing the sampling reprocesses
  instead of silently reusing tensors made with other settings; sampling is seeded, so it is reproducible;
* PyG's own download (a `URLError` traceback offline) is never used: `tasks/modelnet.py` fetches the
  archive, and the presence check accepts any class folders rather than only ModelNet10's;
* a mesh points cannot be sampled from (no surface, NaN or overflowing coordinates) is named in a
  `DataError` instead of failing inside `torch.multinomial`;
* the cache is loaded with `weights_only=True` only (PyG falls back to unrestricted unpickling), and an
  unreadable cache is reported with its fix (delete it: it is rebuilt from the meshes).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.datasets import ModelNet
from torch_geometric.transforms import Compose, NormalizeScale, SamplePoints

from lab.download import DataError

from .off_format import read_off, surface_problem

SAMPLING_SEED = 0


def class_folders(raw_dir: Path) -> list[str]:
    """The class folders under `raw_dir`, sorted: PyG's label i is the i-th of them (empty ones included)."""
    if not Path(raw_dir).is_dir():
        return []
    return sorted(entry.name for entry in Path(raw_dir).iterdir() if entry.is_dir() and not entry.name.startswith("."))


class SampledModelNet(ModelNet):
    """ModelNet with `num_points` area-weighted surface samples per mesh (+ normals), scaled into [-1, 1]."""

    def __init__(self, root: Path, name: str, train: bool, num_points: int, normals: bool):
        self.num_points, self.normals = num_points, normals
        pre_transform = Compose([SamplePoints(num_points, include_normals=normals), NormalizeScale()])
        super().__init__(str(root), name=name, train=train, pre_transform=pre_transform)

    @property
    def raw_file_names(self) -> list[str]:
        return class_folders(Path(self.raw_dir))

    @property
    def processed_dir(self) -> str:
        return os.path.join(self.root, f"processed_{self.num_points}{'_normals' if self.normals else ''}")

    def download(self) -> None:
        raise DataError(f"no ModelNet class folders under {self.raw_dir}")

    def load(self, path: str, data_cls: type = Data) -> None:
        """Read a processed split: tensors and PyG's own allow-listed classes only, never code."""
        try:
            data, self.slices, data_cls = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated (zip reader errors), refused pickles, foreign content
            reason = "refused: it holds pickled code" if "GLOBAL" in str(error) else "truncated or corrupt"
            raise DataError(f"the sampled-point cache {path} cannot be read ({reason}); delete "
                            f"{Path(path).parent} and run again: it is rebuilt from the meshes") from None
        self.data = data_cls.from_dict(data)

    def process(self) -> None:
        """Seeded sampling; one thread, because per-mesh ops are tiny and threads only contend (20x slower)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng():
                torch.manual_seed(SAMPLING_SEED)
                super().process()
        finally:
            torch.set_num_threads(threads)

    def process_set(self, dataset: str) -> list[Data]:
        meshes = []
        for target, category in enumerate(class_folders(Path(self.raw_dir))):
            for path in sorted((Path(self.raw_dir) / category / dataset).glob(f"{category}_*.off")):
                vertices, faces = read_off(path)
                meshes.append((path, Data(pos=vertices, face=faces, y=torch.tensor([target]))))
        if not meshes:
            raise DataError(f"no meshes under {self.raw_dir}/<class>/{dataset}/<class>_*.off")
        return [self._sample(path, mesh) for path, mesh in meshes]

    def _sample(self, path: Path, mesh: Data) -> Data:
        problem = surface_problem(mesh.pos, mesh.face)
        sampled = None if problem else self.pre_transform(mesh)
        if sampled is not None and not torch.isfinite(sampled.pos).all():
            problem = f"its coordinates (up to {mesh.pos.abs().max():.3g}) overflow float32 when normalised"
        if problem:
            raise DataError(f"{path}: {problem}, so no points can be sampled from it; repair or remove the file")
        return sampled


def load_split(root: Path, name: str, train: bool, num_points: int, normals: bool) -> tuple[Tensor, Tensor]:
    """(points (M, num_points, 3 or 6) float32, labels (M,) int64 = index into `class_folders(root/'raw')`)."""
    dataset = SampledModelNet(root, name, train, num_points, normals)
    data = dataset._data  # the whole split, concatenated; every mesh has exactly num_points points
    points = data.pos.view(len(dataset), num_points, 3)
    if normals:
        points = torch.cat([points, data.normal.view(len(dataset), num_points, 3)], dim=-1)
    return points.float().contiguous(), data.y.view(-1).long()
