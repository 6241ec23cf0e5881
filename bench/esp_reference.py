"""The direct reference formulation of ESP attention (ESPFormer, arXiv 2502.07962), for benchmarks and tests.

Written from the math in `reference/espformer.md` §1.11-1.12, not from the authors' code. Every slice
plan is materialised: soft permutations A_l, B_l as a (B, H, L, N, N) stack, U_l = A_lᵀ B_l, the full
cost matrix C, D_l = <C, U_l>, w = softmax(-τ D), G = Σ_l w_l U_l. That costs O(L·N³) time and
O(L·N²) memory: it is the yardstick `attention/esp.py` must match (same numbers) and beat (speed).

Timing it on CPU: its soft-sort tensors are full of denormal floats, which make every op on them several
times slower (~5× overall at N = 256). Call `torch.set_flush_denormal(True)` at process start (before the
first parallel op, so that the worker threads inherit it) to time the formulation rather than that penalty.

Inputs are the raw per-head queries and keys (B, H, N, L), exactly what `attention.esp` receives;
both are scaled by L^-1/2 here, as in the reference code. `keep_mask` is bool (B, N), True = real
token. Padded tokens take no part: each batch item is computed on its valid tokens only and the
rest of its matrix is zero (no sentinel values).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def soft_sort(values: Tensor, sort_temperature: float) -> Tensor:
    """SoftSort with squared distance: (..., N) -> (..., N, N), P[r, j] = softmax_j(-(s_(r) - s_j)² / t)."""
    ranked = values.sort(dim=-1, descending=True).values  # (..., N)  s_(r), r-th largest
    logits = -(ranked[..., :, None] - values[..., None, :]).square() / sort_temperature  # (..., N, N)
    return logits.softmax(dim=-1)


def _dense_plan(q: Tensor, k: Tensor, sort_temperature: float, inv_temperature: float, cost: str) -> Tensor:
    """G for q, k (B, H, N, L) already scaled, all tokens valid -> (B, H, N, N)."""
    a = soft_sort(q.transpose(-1, -2), sort_temperature)  # (B, H, L, N, N)  A_l[r, i]
    b = soft_sort(k.transpose(-1, -2), sort_temperature)  # (B, H, L, N, N)  B_l[r, j]
    plans = a.transpose(-1, -2) @ b  # (B, H, L, N, N)  U_l[i, j] = Σ_r A_l[r, i] B_l[r, j]
    distance = torch.cdist(q, k)  # (B, H, N, N)
    c = distance if cost == "euclidean" else distance.square()
    slice_costs = (plans * c[:, :, None]).sum(dim=(-1, -2))  # (B, H, L)
    weights = torch.softmax(-inv_temperature * slice_costs, dim=-1)  # (B, H, L)
    return torch.einsum("bhl,bhlij->bhij", weights, plans)


def esp_reference_attention_matrix(q: Tensor, k: Tensor, sort_temperature: float = 1e-3,
                                   inv_temperature: float = 10.0,
                                   cost: Literal["euclidean", "sqeuclidean"] = "euclidean",
                                   keep_mask: Tensor | None = None, scale_by_n: bool = False) -> Tensor:
    """ESP attention matrix G (B, H, N, N) of raw per-head q, k (B, H, N, L); keep_mask (B, N) True = real."""
    if cost not in ("euclidean", "sqeuclidean"):
        raise ValueError(f"cost must be 'euclidean' or 'sqeuclidean', got {cost!r}")
    if q.shape != k.shape:
        raise ValueError(f"the reference needs q and k of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    scale = q.shape[-1] ** -0.5
    q, k = q * scale, k * scale
    if keep_mask is None:
        plan = _dense_plan(q, k, sort_temperature, inv_temperature, cost)
        return plan * q.shape[2] if scale_by_n else plan
    out = q.new_zeros(q.shape[0], q.shape[1], q.shape[2], q.shape[2])  # (B, H, N, N)
    for item, keep in enumerate(keep_mask):
        index = keep.nonzero().squeeze(-1)  # (n_valid,)
        plan = _dense_plan(q[item:item + 1, :, index], k[item:item + 1, :, index], sort_temperature,
                           inv_temperature, cost)[0]  # (H, n_valid, n_valid)
        plan = plan * index.numel() if scale_by_n else plan
        out[item, :, index[:, None], index[None, :]] = plan
    return out


def esp_reference_forward(q: Tensor, k: Tensor, v: Tensor, sort_temperature: float = 1e-3,
                          inv_temperature: float = 10.0,
                          cost: Literal["euclidean", "sqeuclidean"] = "euclidean",
                          keep_mask: Tensor | None = None, scale_by_n: bool = False) -> Tensor:
    """G @ v with G from `esp_reference_attention_matrix`: (B, H, N, L) outputs."""
    return esp_reference_attention_matrix(q, k, sort_temperature, inv_temperature, cost, keep_mask,
                                          scale_by_n) @ v
