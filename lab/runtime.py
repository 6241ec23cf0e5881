"""Where and how a run executes: device choice, autocast, seeding, torchrun data parallelism, signals."""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal

import numpy as np
import torch
import torch.distributed as dist

from .registry import ConfigError


def select_device(requested: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; anything else is passed to torch.device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"device={requested} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={requested} but CUDA is not available; use device=auto or device=cpu")
    return device


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA (precision auto/bf16); full float32 otherwise. bf16 needs no loss scaler."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        use_bf16 = False
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, epoch: int, index: int) -> int:
    """A reproducible seed for (run seed, epoch, batch index): what makes resumed runs exact."""
    value = seed
    for part in (epoch, index):
        value = (value * 1_000_003 + part + 1) % (2**63 - 1)
    return value


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": _numpy_state_to_tensors(np.random.get_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_tensors(state):
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)


def _to_tuple(value):
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# -- torchrun --------------------------------------------------------------------------------------
def process_rank() -> int:
    """This process's rank among torchrun's workers (0 in a plain `python train.py`)."""
    return int(os.environ.get("RANK", 0))


class Distributed:
    """Rank/world from torchrun's environment; gloo on CPU, NCCL on CUDA; a no-op in one process."""

    def __init__(self, device: torch.device):
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = process_rank()
        self.device = device if device.type == "cuda" else torch.device("cpu")  # NCCL reduces CUDA tensors only
        if self.world_size > 1 and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Concatenate each rank's per-example outputs (on CPU) in rank order."""
        if self.world_size == 1:
            return tensors
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, {k: v.cpu() for k, v in tensors.items()})
        return {key: torch.cat([part[key] for part in parts]) for key in tensors}

    def broadcast(self, obj):
        """Rank 0's value of `obj` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on some rank (every rank must call it at the same point)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of `values` over the ranks."""
        if self.world_size == 1:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def check_identical(self, state: dict[str, torch.Tensor]) -> str:
        """The SHA-256 of `state` (a model's state dict); RuntimeError if it differs between ranks, which
        would mean rank 0's checkpoint is not the model the other ranks trained (a data-parallel bug)."""
        digest = hashlib.sha256()
        for name, tensor in state.items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        mine = digest.hexdigest()
        if self.world_size > 1:
            digests: list = [None] * self.world_size
            dist.all_gather_object(digests, mine)
            if len(set(digests)) > 1:
                raise RuntimeError(f"the model differs across data-parallel ranks (state digests {digests})")
        return mine

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


class StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks at step boundaries (save, then exit).

    A second signal falls back to the default behaviour, so a stuck run can still be killed.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        if process_rank() == 0:
            print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint at the end of this step",
                  flush=True)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
