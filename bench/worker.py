"""One benchmark measurement: forward+backward time and peak memory of one mechanism at one length.

`bench/attention.py` runs this module in a fresh subprocess per (mechanism, n), so that peak memory
is not polluted by earlier, larger measurements:

    python -m bench.worker --entry esp:cost=sqeuclidean --n 1024 [--batch 1 --heads 4 --head-dim 32]

It prints one line `BENCH_RESULT {json}` on stdout. A measurement is: a tiny untimed call (n = 16)
that absorbs one-time lazy initialisation (thread pools, kernel dispatch), then at the real n one
warm-up call followed by `--repeats` timed calls, more while they total under `--min-seconds` (at
most 200), fewer once their total exceeds the budget (none when the warm-up alone exceeds it); their
median is reported. Loss = (out * fixed random weights).sum().

Peak memory is measured on the warm-up call, as the increase over a baseline taken after imports and
input allocation:
* CPU: the peak resident set size (VmHWM, reset through /proc/self/clear_refs) minus the resident
  size at the baseline. The parent sets MALLOC_MMAP_THRESHOLD_ so that freed buffers above 64 KiB go
  back to the OS and the peak tracks live memory rather than the allocator's high-water mark. That
  setting makes every large allocation fault in fresh pages, which no user pays for; so after the
  warm-up the allocator is switched back to glibc's steady-state thresholds for the timed calls;
* CUDA: torch.cuda.max_memory_allocated minus the allocated bytes at the baseline.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import statistics
import time
from typing import Any

import torch
from torch import nn

from attention import build_attention
from attention.registry import ATTENTIONS
from lab.config import parse_option_value
from lab.registry import ConfigError, Option, closest_first, configurable_options

RESULT_MARKER = "BENCH_RESULT "
MAX_REPEATS = 200  # fast calls repeat beyond --repeats until --min-seconds: one 20 ms call is noisy
DIRECT_ESP = "esp_direct"  # pseudo-mechanism: the direct reference ESP formulation in bench/esp_reference.py


def parse_entry(entry: str) -> tuple[str, dict[str, Any]]:
    """`"esp:cost=sqeuclidean,slice_chunk=4"` -> `("esp", {"cost": "sqeuclidean", "slice_chunk": 4})`, each value
    parsed and type-checked against the mechanism's options like a config override."""
    name, _, option_text = entry.strip().partition(":")
    if not name:
        raise ConfigError(f"bad attention entry {entry!r}: expected name or name:option=value,option=value")
    schema = option_schema(name)
    options: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in option_text.split(","))):
        key, equals, value = (part.strip() for part in pair.partition("="))
        if not equals or not key:
            raise ConfigError(f"bad option {pair!r} in {entry!r}: expected option=value")
        if key not in schema:
            raise ConfigError(f"unknown option '{key}' for attention '{name}'; valid options: "
                              + ", ".join(closest_first(key, schema)))
        options[key] = parse_option_value(value, schema[key], f"{name}.{key}")
    return name, options


def option_schema(name: str) -> dict[str, Option]:
    """The options of a registered mechanism, or of the direct ESP formulation for `esp_direct`."""
    if name != DIRECT_ESP:
        return ATTENTIONS.options(name)
    from bench.esp_reference import esp_reference_forward  # written separately; absent -> ImportError

    return configurable_options(esp_reference_forward)


class _Function(nn.Module):
    """A plain function `f(q, k, v, **options)` with the core's call signature."""

    def __init__(self, function, options: dict[str, Any]):
        super().__init__()
        self.function, self.options = function, options

    def forward(self, q, k, v):
        return self.function(q, k, v, **self.options)


def make_attention(name: str, options: dict[str, Any], heads: int, head_dim: int) -> nn.Module:
    """A registered core, or the direct ESP formulation for `esp_direct` (options from `parse_entry`)."""
    if name != DIRECT_ESP:
        return build_attention(name, num_heads=heads, head_dim=head_dim, **options)
    from bench.esp_reference import esp_reference_forward

    return _Function(esp_reference_forward, options)


class PeakMemory:
    """Peak bytes allocated above the baseline taken by `start()` (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            return
        self.baseline = _proc_status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0)

    def peak_increase(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        return _proc_status_bytes("VmHWM") - self.baseline


def use_default_allocator_thresholds() -> None:
    """Undo MALLOC_MMAP_THRESHOLD_ for the rest of the process: glibc's dynamic mmap threshold settles at
    its 32 MiB ceiling (64-bit) once large buffers have been freed, with trimming at twice that."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 * 2**20)
    libc.mallopt(m_trim_threshold, 64 * 2**20)


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f"/proc/self/status has no {field}; CPU peak memory needs Linux")


def measure(entry: str, n: int, *, batch: int = 1, heads: int = 4, head_dim: int = 32, repeats: int = 5,
            min_seconds: float = 1.0, budget_seconds: float = 60.0, device: str = "cpu",
            seed: int = 0) -> dict[str, Any]:
    """Time and peak memory of one forward+backward of `entry` at length `n` (in this process)."""
    dev = torch.device(device)
    core = make_attention(*parse_entry(entry), heads, head_dim).to(dev)
    generator = torch.Generator().manual_seed(seed)

    def inputs(length: int):  # q, k, v: (B, H, N, D) leaves with grads; loss weights like the output
        tensors = [torch.randn(batch, heads, length, head_dim, generator=generator) for _ in range(4)]
        return [t.to(dev).requires_grad_(i < 3) for i, t in enumerate(tensors)]

    def forward_backward(q, k, v, weights) -> float:
        start = time.perf_counter()
        (core(q, k, v) * weights).sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elapsed = time.perf_counter() - start
        q.grad = k.grad = v.grad = None
        core.zero_grad(set_to_none=True)
        return elapsed

    forward_backward(*inputs(16))  # one-time lazy initialisation, outside the measurement
    tensors = inputs(n)
    memory = PeakMemory(dev)
    memory.start()
    warmup = forward_backward(*tensors)
    peak_bytes = memory.peak_increase()
    if dev.type == "cpu":
        use_default_allocator_thresholds()
    times: list[float] = []
    while warmup <= budget_seconds and sum(times) <= budget_seconds and (
            len(times) < repeats or (sum(times) < min_seconds and len(times) < MAX_REPEATS)):
        times.append(forward_backward(*tensors))
    seconds = statistics.median(times) if times else warmup
    return {"time_s": seconds, "times_s": times, "warmup_s": warmup, "timed_runs": len(times),
            "over_budget": seconds > budget_seconds, "peak_bytes": peak_bytes}


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entry", required=True, help="mechanism, optionally name:option=value,...")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--budget-seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Denormal floats (exp of very negative soft-sort logits) make CPU arithmetic 10-100x slower; flushing
    # them to zero is how the SPEC's anchor numbers were taken, and it is applied to every mechanism alike.
    torch.set_flush_denormal(True)
    try:
        result = {"status": "ok", **measure(args.entry, args.n, batch=args.batch, heads=args.heads,
                                            head_dim=args.head_dim, repeats=args.repeats,
                                            min_seconds=args.min_seconds, budget_seconds=args.budget_seconds,
                                            device=args.device)}
    except Exception as error:  # noqa: BLE001 - one failing mechanism must not stop the benchmark
        status = "oom" if _is_out_of_memory(error) else "error"
        result = {"status": status, "message": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    print(RESULT_MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
