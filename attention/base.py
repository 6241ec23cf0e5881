"""The one interface every attention mechanism implements.

    core(q, k, v, key_padding_mask=None, causal=False) -> out          q: (B, H, Nq, D)  k, v: (B, H, Nk, D)
    core.attention_matrix(q, k, key_padding_mask=None, causal=False)  -> (B, H, Nq, Nk)

Conventions, enforced here so each mechanism only writes its math (`_attend`, `_attention_matrix`):

* `key_padding_mask` is bool (B, Nk), **True = padding** (PyTorch's convention). When Nq == Nk
  (self-attention) the same mask marks padded queries unless `query_padding_mask` says otherwise.
  Padded query rows come out as zeros and never influence valid rows.
* Capabilities are class attributes: `supports_causal`, `supports_cross` (Nq != Nk allowed),
  `doubly_stochastic`, `complexity` ("quadratic" | "linear"). Asking for something a mechanism cannot
  do raises; nothing silently falls back.
* With `compute_in_float32` (the default) the core runs in float32 with autocast disabled, because
  iterative normalisations are not stable in half precision; the output is cast back.
* Incremental decoding: every mechanism that `supports_causal` also implements
  `step(q, k, v, state) -> (out, state)`, causal attention of the newest tokens after those summarised in
  `state` (softmax: a KV cache; the linear mechanisms: a constant-size recurrent state).
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn


class AttentionCore(nn.Module):
    supports_causal: ClassVar[bool] = False
    supports_cross: ClassVar[bool] = True
    doubly_stochastic: ClassVar[bool] = False
    complexity: ClassVar[Literal["quadratic", "linear"]] = "quadratic"
    compute_in_float32: ClassVar[bool] = True

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim

    # -- to implement -------------------------------------------------------------------------
    def _attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
                query_padding_mask: Tensor | None, causal: bool) -> Tensor:
        raise NotImplementedError

    def _attention_matrix(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None,
                          query_padding_mask: Tensor | None, causal: bool) -> Tensor:
        raise NotImplementedError

    # -- shared checks and precision handling -------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                causal: bool = False, query_padding_mask: Tensor | None = None) -> Tensor:
        query_padding_mask = self._check(q, k, key_padding_mask, query_padding_mask, causal)
        if v.shape[:3] != k.shape[:3]:
            raise ValueError(f"v {tuple(v.shape)} must match k {tuple(k.shape)} in (B, H, Nk)")
        if self.compute_in_float32:
            with torch.autocast(q.device.type, enabled=False):
                out = self._attend(at_least_float32(q), at_least_float32(k), at_least_float32(v),
                                   key_padding_mask, query_padding_mask, causal).to(v.dtype)
        else:
            out = self._attend(q, k, v, key_padding_mask, query_padding_mask, causal)
        return zero_padded_rows(out, query_padding_mask)

    def step(self, q: Tensor, k: Tensor, v: Tensor, state=None,
             key_padding_mask: Tensor | None = None) -> tuple[Tensor, object]:
        """Causal attention of T new tokens (B, H, T, D) after the tokens summarised in `state`.

        `state=None` starts a sequence; returns the output (B, H, T, D) and the state that now includes
        the new tokens. Padded new tokens (`key_padding_mask` (B, T), True = padding) produce zero rows
        and are never attended to. Stepping through a sequence equals the causal `forward` over it.
        """
        name = getattr(type(self), "registry_name", type(self).__name__)
        raise NotImplementedError(f"attention '{name}' has no incremental (decoding) form")

    @torch.no_grad()
    def attention_matrix(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None,
                         causal: bool = False, query_padding_mask: Tensor | None = None) -> Tensor:
        """The dense (B, H, Nq, Nk) matrix this mechanism applies to V. For tests and plots (small N)."""
        return self.dense_attention_matrix(q, k, key_padding_mask, causal, query_padding_mask)

    def dense_attention_matrix(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None,
                               causal: bool = False, query_padding_mask: Tensor | None = None) -> Tensor:
        """`attention_matrix` with gradients enabled (for tests that differentiate through it)."""
        query_padding_mask = self._check(q, k, key_padding_mask, query_padding_mask, causal)
        with torch.autocast(q.device.type, enabled=False):
            matrix = self._attention_matrix(at_least_float32(q), at_least_float32(k), key_padding_mask,
                                            query_padding_mask, causal)
        return zero_padded_rows(matrix, query_padding_mask)

    def _check(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None,
               query_padding_mask: Tensor | None, causal: bool) -> Tensor | None:
        name = getattr(type(self), "registry_name", type(self).__name__)
        if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
            raise ValueError(f"{name}: q {tuple(q.shape)} and k {tuple(k.shape)} must be (B, H, N, D) "
                             "with matching B, H and D")
        if causal and not self.supports_causal:
            raise ValueError(f"attention '{name}' cannot run causal")
        if causal and q.shape[2] != k.shape[2]:
            raise ValueError(f"{name}: causal attention needs Nq == Nk, got {q.shape[2]} and {k.shape[2]}")
        if q.shape[2] != k.shape[2] and not self.supports_cross:
            raise ValueError(f"attention '{name}' does not support cross-attention (Nq != Nk)")
        if key_padding_mask is not None and key_padding_mask.shape != (k.shape[0], k.shape[2]):
            raise ValueError(f"key_padding_mask must be (B, Nk) = {(k.shape[0], k.shape[2])}, "
                             f"got {tuple(key_padding_mask.shape)}")
        if query_padding_mask is None and key_padding_mask is not None and q.shape[2] == k.shape[2]:
            query_padding_mask = key_padding_mask  # self-attention: the same tokens are padding
        if query_padding_mask is not None and query_padding_mask.shape != (q.shape[0], q.shape[2]):
            raise ValueError(f"query_padding_mask must be (B, Nq) = {(q.shape[0], q.shape[2])}, "
                             f"got {tuple(query_padding_mask.shape)}")
        return query_padding_mask

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"


def at_least_float32(x: Tensor) -> Tensor:
    """Half-precision tensors to float32; float32 and float64 (used by exactness tests) unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def zero_padded_rows(x: Tensor, query_padding_mask: Tensor | None) -> Tensor:
    """Zero the query rows of a (B, H, Nq, ...) tensor that are padding."""
    if query_padding_mask is None:
        return x
    return x.masked_fill(query_padding_mask[:, None, :, None], 0.0)


def causal_mask(n: int, device: torch.device) -> Tensor:
    """(n, n) bool, True where query i may see key j (j <= i)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def allowed_keys(key_padding_mask: Tensor | None, causal: bool, nq: int, nk: int,
                 device: torch.device) -> Tensor | None:
    """Bool mask broadcastable to (B, H, Nq, Nk), True = query may attend to key; None = all."""
    allowed = None
    if key_padding_mask is not None:
        allowed = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Nk)
    if causal:
        tri = causal_mask(nq, device)[None, None]  # (1, 1, N, N)
        allowed = tri if allowed is None else allowed & tri
    return allowed
