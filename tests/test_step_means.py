"""lab/hooks.py across data-parallel ranks, in a real two-process gloo group: StepMeans gives every rank the
mean over every set of the step, whatever rank or micro-batch it came from; AuxiliaryGradients adds the
rank-averaged auxiliary gradient (as DDP averages the task gradient)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lab.hooks import AuxiliaryGradients, StepMeans

# per rank: micro-batches of per-set costs (sets, 3 slices); unequal sizes
MICRO_BATCHES = {0: [torch.arange(6.0).view(2, 3), torch.ones(1, 3)],
                 1: [torch.full((4, 3), 10.0), torch.tensor([[1.0, 2.0, 3.0]])]}


def every_set() -> torch.Tensor:
    return torch.cat([part for rank in sorted(MICRO_BATCHES) for part in MICRO_BATCHES[rank]])


def accumulate(rank: int) -> dict[str, torch.Tensor]:
    means = StepMeans()
    for costs in MICRO_BATCHES[rank]:
        means.add("cost", costs.sum(0), len(costs))
        means.add("total", costs.sum(), len(costs))
    return means.reduce()


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = torch.nn.Linear(2, 1, bias=False)
        gradients = AuxiliaryGradients(model)
        gradients.backward(model.weight.sum() * 0, {"penalty": (rank + 1.0) * model.weight.sum()})  # ∇ = rank + 1
        gradients.add_to_gradients()
        torch.save({**accumulate(rank), "grad": model.weight.grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_micro_batches_of_one_process():
    means = accumulate(0)
    local = torch.cat(MICRO_BATCHES[0])
    torch.testing.assert_close(means["cost"], local.mean(0))
    torch.testing.assert_close(means["total"], local.sum(1).mean())
    assert StepMeans().reduce() == {}


def test_two_ranks_agree_on_the_mean_over_every_set_and_on_the_auxiliary_gradient(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        means = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(means["cost"], every_set().mean(0))
        torch.testing.assert_close(means["total"], every_set().sum(1).mean())
        torch.testing.assert_close(means["grad"], torch.full((1, 2), 1.5))  # the mean of 1 and 2
