"""Per-token decoding cost as the prefix grows: softmax's KV cache against the linear mechanisms' recurrent state.

    python -m bench.decoding [--attentions softmax,luna,linear,performer] [--prefixes 64,256,1024,4096,16384]
                             [--batch 8] [--dim 256] [--heads 4] [--repeats 50] [--threads 1]

For each mechanism and prefix length L, a causal `MultiHeadAttention` (projections included) first takes the
L-token prefix in one `step` (prefill); then one more token's `step` from that state is timed: the fastest of
`repeats` steps from the same state (the one least disturbed by other load on a shared machine). Softmax attends over its L cached keys (O(L) per token, a cache that
grows by one token a step); luna, linear and performer update a state of fixed size (O(1) per token).
Prints milliseconds per token and the growth relative to the shortest prefix, plus the state's size.
"""
from __future__ import annotations

import argparse
import time

import torch

from attention import MultiHeadAttention


def state_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state if isinstance(t, torch.Tensor))


@torch.no_grad()
def step_time(name: str, prefix: int, *, batch: int, dim: int, heads: int, repeats: int) -> tuple[float, int]:
    """Seconds for one decoding step after `prefix` tokens, and the bytes of the state it reads."""
    torch.manual_seed(0)
    block = MultiHeadAttention(dim, heads, name, causal=True).eval()
    _, state = block.step(torch.randn(batch, prefix, dim), None)  # prefill
    token = torch.randn(batch, 1, dim)
    for _ in range(10):  # warm-up
        block.step(token, state)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block.step(token, state)
        times.append(time.perf_counter() - start)
    return min(times), state_bytes(state)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decoding", description=__doc__.splitlines()[0])
    parser.add_argument("--attentions", default="softmax,luna,linear,performer")
    parser.add_argument("--prefixes", default="64,256,1024,4096,16384")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    prefixes = [int(p) for p in args.prefixes.split(",")]
    print(f"one decoding step (ms per token), batch {args.batch}, dim {args.dim}, {args.heads} heads, "
          f"{args.threads} thread(s); growth = time / time at prefix {prefixes[0]}")
    print(f"{'attention':<10} " + " ".join(f"{p:>10}" for p in prefixes) + "   growth   state at the longest")
    for name in args.attentions.split(","):
        results = [step_time(name, p, batch=args.batch, dim=args.dim, heads=args.heads, repeats=args.repeats)
                   for p in prefixes]
        times = [seconds * 1e3 for seconds, _ in results]
        print(f"{name:<10} " + " ".join(f"{t:>10.3f}" for t in times)
              + f"   {times[-1] / times[0]:>5.1f}x   {results[-1][1] / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
