"""Kernelised linear attention with a pluggable feature map: the shared core of `luna`, `linear`, `performer`.

Katharopoulos et al. 2020, "Transformers are RNNs". With a non-negative feature map φ: R^d -> R^D,

    y_i = φ(q_i)ᵀ S / (φ(q_i)ᵀ z + δ),    S = Σ_j φ(k_j) v_jᵀ  (D, d_v),    z = Σ_j φ(k_j)  (D,)

costs O(n·D·d_v) time and memory; the n×n kernel matrix is never formed. The three mechanisms differ only
in φ (a `FeatureMap`). Causal attention runs in chunks: exact masked quadratic attention inside a chunk of
`chunk_size` tokens plus the carried state (S, z) of all earlier chunks. The same chunk routine with a
chunk of one token is the O(1)-state recurrent step used for decoding (`step`).

Padding: padded keys are removed by zeroing φ(k_j) and v_j *after* the feature map (φ(0) ≠ 0 in general;
masking the input instead leaks padding into the normaliser, fla-org/flash-linear-attention #1263).

Exponential feature maps (Performer's exp(ωᵀx − ‖x‖²/2)) return log-features and the core stabilises them
(maxima via `max(dim)`, whose backward is one scatter, rather than `amax`'s several full passes):
queries by their own row maximum (a per-row factor, cancels in the row's ratio), keys by the running maximum
of the log-features of the valid keys each query sees (the global maximum when not causal). δ is added at
that scale, so a causal output never depends on future keys, and chunked, recurrent and dense forms agree.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from lab.registry import AtLeast

from .base import AttentionCore, allowed_keys, at_least_float32, zero_padded_rows

ChunkSize = Annotated[int, AtLeast(1)]  # the mechanisms' `chunk_size` option: positions per block of the causal form
Eps = Annotated[float, AtLeast(0.0)]  # their `eps` option: added to the normaliser


class FeatureMap(nn.Module):
    """φ: (B, H, N, d) -> (B, H, N, D) non-negative features, applied to queries and keys alike.

    With `exponential = True` the map returns log φ instead (the core exponentiates with a stabiliser).
    """

    exponential: ClassVar[bool] = False

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class LinearState(NamedTuple):
    """What a causal linear attention remembers of the keys it has seen: constant size in n."""

    kv: Tensor  # (B, H, D, d_v)  Σ_j φ(k_j) v_jᵀ
    k_sum: Tensor  # (B, H, D)     Σ_j φ(k_j)
    log_scale: Tensor | None  # (B, H) exponential maps: kv and k_sum are stored divided by exp(log_scale)


class LinearAttentionCore(AttentionCore):
    """Linear attention around `self.feature_map`; subclasses build the map from their options."""

    supports_causal = True
    supports_cross = True
    doubly_stochastic = False
    complexity = "linear"

    def __init__(self, num_heads: int, head_dim: int, feature_map: FeatureMap, *, chunk_size: int, eps: float):
        super().__init__(num_heads, head_dim)
        self.feature_map = feature_map
        self.chunk_size = chunk_size
        self.eps = eps

    # -- features ------------------------------------------------------------------------------
    def _query_features(self, q: Tensor) -> Tensor:
        features = self.feature_map(q)  # (B, H, Nq, D)
        if self.feature_map.exponential:  # a per-row factor: cancels in the row's ratio
            features = torch.exp(features - features.max(dim=-1, keepdim=True).values)
        return features

    def _key_features(self, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """φ(k) (log φ(k) for exponential maps) and v with padded keys zeroed after the map (−inf for logs)."""
        features = self.feature_map(k)  # (B, H, Nk, D)
        if key_padding_mask is not None:
            padded = key_padding_mask[:, None, :, None]  # (B, 1, Nk, 1)
            features = features.masked_fill(padded, -torch.inf if self.feature_map.exponential else 0.0)
            v = v.masked_fill(padded, 0.0)
        return features, v

    # -- attention -----------------------------------------------------------------------------
    def _attend(self, q, k, v, key_padding_mask, query_padding_mask, causal) -> Tensor:
        query_features = self._query_features(q)
        key_features, v = self._key_features(k, v, key_padding_mask)
        if causal:
            return self._causal(query_features, key_features, v, None)[0]
        if self.feature_map.exponential:
            log_scale = finite_or_zero(key_features.flatten(-2).max(dim=-1).values)[..., None, None]  # (B,H,1,1)
            key_features = torch.exp(key_features - log_scale)
        kv = key_features.transpose(-1, -2) @ v  # (B, H, D, d_v)
        k_sum = key_features.sum(dim=-2).unsqueeze(-1)  # (B, H, D, 1)
        return (query_features @ kv) / (query_features @ k_sum + self.eps)  # (B, H, Nq, d_v)

    def _causal(self, query_features: Tensor, key_features: Tensor, v: Tensor,
                state: LinearState | None) -> tuple[Tensor, LinearState]:
        """Causal attention chunk by chunk from `state` (None = no earlier tokens); returns the new state."""
        if state is None:
            state = self.initial_state(key_features, v)
        outputs = []
        # split, not slicing: one backward node for all chunks (a slice's backward writes a full-size gradient)
        for chunk in zip(*(t.split(self.chunk_size, dim=2) for t in (query_features, key_features, v))):
            out, state = self._chunk(*chunk, state)
            outputs.append(out)
        return torch.cat(outputs, dim=2), state

    def _chunk(self, query_features: Tensor, key_features: Tensor, v: Tensor,
               state: LinearState) -> tuple[Tensor, LinearState]:
        """One chunk of T tokens: masked quadratic attention inside it plus the carried state."""
        kv, k_sum, eps = state.kv, state.k_sum, self.eps
        log_scale = None
        if self.feature_map.exponential:
            # seen[i]: max log-feature over the valid keys up to token i; the state moves to the chunk's last
            seen = torch.maximum(state.log_scale[..., None], key_features.max(dim=-1).values.cummax(dim=-1).values)
            log_scale = seen[..., -1]  # (B, H); −inf while no valid key has been seen
            scale = finite_or_zero(log_scale)[..., None]  # (B, H, 1)
            key_features = torch.exp(key_features - scale[..., None])  # (B, H, T, D)
            carry = torch.exp(state.log_scale - scale[..., 0])[..., None]  # (B, H, 1): 0 for an empty state
            kv, k_sum = kv * carry[..., None], k_sum * carry
            eps = self._scaled_eps(torch.where(seen.isfinite(), seen, scale) - scale)  # (B, H, T, 1)
        scores = (query_features @ key_features.transpose(-1, -2)).tril()  # (B, H, T, T), causal in the chunk
        numerator = query_features @ kv + scores @ v  # (B, H, T, d_v)
        denominator = query_features @ k_sum[..., None] + scores.sum(dim=-1, keepdim=True)  # (B, H, T, 1)
        kv = kv + key_features.transpose(-1, -2) @ v
        k_sum = k_sum + key_features.sum(dim=-2)
        return numerator / (denominator + eps), LinearState(kv, k_sum, log_scale)

    def initial_state(self, key_features: Tensor, v: Tensor) -> LinearState:
        """The empty state for keys/values shaped like these ((B, H, *, D) and (B, H, *, d_v))."""
        b, h, _, dim = key_features.shape
        kv = key_features.new_zeros(b, h, dim, v.shape[-1])
        log_scale = key_features.new_full((b, h), -torch.inf) if self.feature_map.exponential else None
        return LinearState(kv, key_features.new_zeros(b, h, dim), log_scale)

    def step(self, q: Tensor, k: Tensor, v: Tensor, state: LinearState | None = None,
             key_padding_mask: Tensor | None = None) -> tuple[Tensor, LinearState]:
        """Causal attention of T new tokens (B, H, T, d) after the tokens summarised in `state`.

        T = 1 is recurrent decoding with O(1) memory per step; `state=None` starts a sequence. Padded new
        tokens (`key_padding_mask` (B, T), True = padding) neither enter the state nor produce output.
        """
        with torch.autocast(q.device.type, enabled=False):
            query_features = self._query_features(at_least_float32(q))
            key_features, values = self._key_features(at_least_float32(k), at_least_float32(v), key_padding_mask)
            out, state = self._causal(query_features, key_features, values, state)
        return zero_padded_rows(out.to(v.dtype), key_padding_mask), state

    # -- dense form (tests and plots) ----------------------------------------------------------
    def _attention_matrix(self, q, k, key_padding_mask, query_padding_mask, causal) -> Tensor:
        query_features = self._query_features(q)
        key_features, _ = self._key_features(k, k, key_padding_mask)
        eps = self.eps
        if self.feature_map.exponential:
            seen = key_features.max(dim=-1).values  # (B, H, Nk) each key's max log-feature
            top = finite_or_zero(seen.max(dim=-1, keepdim=True).values)  # (B, H, 1)
            seen = seen.cummax(dim=-1).values if causal else seen.max(dim=-1, keepdim=True).values
            eps = self._scaled_eps(torch.where(seen.isfinite(), seen, top) - top)  # δ at each row's key scale
            key_features = torch.exp(key_features - top[..., None])
        kernel = query_features @ key_features.transpose(-1, -2)  # (B, H, Nq, Nk)
        allowed = allowed_keys(key_padding_mask, causal, q.shape[2], k.shape[2], q.device)
        if allowed is not None:
            kernel = kernel.masked_fill(~allowed, 0.0)
        return kernel / (kernel.sum(dim=-1, keepdim=True) + eps)

    def _scaled_eps(self, log_ratio: Tensor) -> Tensor:
        """δ·exp(log_ratio) (B, H, N, 1): δ at a query's key scale, expressed at a larger scale (log_ratio ≤ 0).

        Clamped at e^-60: a row that far below the scale has underflowed anyway; this keeps 0/0 out.
        """
        return self.eps * torch.exp(log_ratio.clamp(min=-60.0))[..., None]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}, eps={self.eps}"


def finite_or_zero(x: Tensor) -> Tensor:
    """x with ±inf/nan entries replaced by 0 (a stabiliser for rows with no valid key)."""
    return torch.where(x.isfinite(), x, torch.zeros_like(x))
