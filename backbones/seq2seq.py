"""Pre-LN Transformer encoder-decoder for translation (Vaswani et al. 2017), the attention chosen per role.

* Encoder self-attention: `attention=` (any registered mechanism; the papers put ESP, Sinkhorn and
  LOTFormer here).
* Decoder self-attention: `model.decoder_attention`, causal, so a mechanism that supports causal attention
  (softmax, luna, linear, performer); another choice is refused at construction.
* Cross-attention: `model.cross_attention`, also one of the causal-capable mechanisms. Their outputs are
  computed query by query; a doubly-stochastic plan (sinkhorn, lotformer) normalises over all target
  positions at once, so under teacher forcing position i would see the later target tokens.

Tokens come from one joint vocabulary: embeddings scaled by √dim plus sinusoidal positions (as fairseq's
transformer), shared by the encoder input, the decoder input and the output projection
(`share_embeddings`; false keeps a separate encoder embedding and ties only the decoder's input and output,
fairseq's `--share-decoder-input-output-embed`). The decoder and cross-attention mechanisms take their
constructor defaults; `attention.*` options apply to the encoder.

Decoding (backbones/decoding.py) runs `encode` once, then `decode_step` one token at a time with a state
per layer: a KV cache for softmax, the constant-size recurrent state for the linear mechanisms, the
projected encoder keys/values for cross-attention. The defaults are sized for a CPU; fairseq's
`transformer_iwslt_de_en` is `experiment=transformer_iwslt_de_en`. `head_dim` (default dim / num_heads) sets
each head's width in every block.
"""
from __future__ import annotations

import math
from typing import Annotated, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attention import AttentionSpec, get_attention, list_attentions
from attention.registry import ATTENTIONS
from lab.registry import AtLeast, Below, ConfigError

from . import register_backbone
from .blocks import Encoder, TransformerBlock


class DecoderState(NamedTuple):
    """What incremental decoding carries from one step to the next."""

    length: int  # target positions decoded so far
    layers: list[tuple]  # per decoder block: (self-attention state, cross-attention state)


def causal_mechanism(name: str, key: str) -> str:
    """`name` if it is a mechanism that attends query by query (supports causal attention), else ConfigError."""
    try:
        name = ATTENTIONS.canonical(name)
    except ConfigError as error:
        raise ConfigError(f"model.{key}: {error}") from None
    if not get_attention(name).supports_causal:
        able = [n for n in list_attentions() if get_attention(n).supports_causal]
        raise ConfigError(f"model.{key}={name}: the decoder needs a causal mechanism (one that attends query by "
                          f"query); valid choices: {', '.join(able)}")
    return name


def sinusoidal_positions(start: int, length: int, dim: int, device: torch.device) -> Tensor:
    """(length, dim) position encodings of positions start .. start + length - 1: sin and cos halves."""
    positions = torch.arange(start, start + length, device=device, dtype=torch.float32)[:, None]  # (T, 1)
    frequencies = torch.exp(torch.arange(dim // 2, device=device) * (-math.log(10000.0) / max(1, dim // 2 - 1)))
    angles = positions * frequencies[None, :]  # (T, dim / 2)
    return F.pad(torch.cat([angles.sin(), angles.cos()], dim=-1), (0, dim % 2))


def select_rows(state, index: Tensor):
    """Every tensor in a (nested tuple) decoding state with its batch rows picked by `index`."""
    if isinstance(state, Tensor):
        return state.index_select(0, index)
    if isinstance(state, tuple):
        items = (select_rows(item, index) for item in state)
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    return state


@register_backbone("seq2seq")
class Seq2Seq(nn.Module):
    def __init__(self, *, vocab_size: int, attention: AttentionSpec, dim: Annotated[int, AtLeast(1)] = 256,
                 encoder_depth: Annotated[int, AtLeast(1)] = 3, decoder_depth: Annotated[int, AtLeast(1)] = 3,
                 num_heads: Annotated[int, AtLeast(1)] = 4, head_dim: int | None = None, mlp_ratio: float = 2.0,
                 dropout: Annotated[float, AtLeast(0), Below(1)] = 0.1,
                 decoder_attention: str = "softmax", cross_attention: str = "softmax",
                 share_embeddings: bool = True):
        super().__init__()
        decoder_attention = causal_mechanism(decoder_attention, "decoder_attention")
        cross_attention = causal_mechanism(cross_attention, "cross_attention")
        self.dim = dim
        self.target_embed = nn.Embedding(vocab_size, dim)
        self.source_embed = self.target_embed if share_embeddings else nn.Embedding(vocab_size, dim)
        for embedding in {self.target_embed, self.source_embed}:
            nn.init.normal_(embedding.weight, std=dim ** -0.5)
        self.dropout = nn.Dropout(dropout)
        self.encoder = Encoder(dim, encoder_depth, num_heads, attention, mlp_ratio=mlp_ratio, dropout=dropout,
                               head_dim=head_dim)
        self.decoder = nn.ModuleList(
            TransformerBlock(dim, num_heads, decoder_attention, mlp_ratio=mlp_ratio, dropout=dropout, causal=True,
                             cross_attention=cross_attention, head_dim=head_dim)
            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(dim)

    def _embed(self, tokens: Tensor, embedding: nn.Embedding, start: int = 0) -> Tensor:
        """tokens (B, T) at positions start .. start + T - 1 -> (B, T, dim)."""
        x = embedding(tokens) * math.sqrt(self.dim) + sinusoidal_positions(start, tokens.shape[1], self.dim,
                                                                           tokens.device)
        return self.dropout(x)

    def _logits(self, x: Tensor) -> Tensor:
        return F.linear(self.decoder_norm(x), self.target_embed.weight)  # (B, T, vocab), tied to the embedding

    def encode(self, source_tokens: Tensor, source_padding_mask: Tensor | None = None) -> Tensor:
        """source_tokens (B, S) -> encoder states (B, S, dim); padding_mask True = padding."""
        return self.encoder(self._embed(source_tokens, self.source_embed), source_padding_mask)

    def forward(self, source_tokens: Tensor, target_tokens: Tensor, source_padding_mask: Tensor | None = None,
                target_padding_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: target_tokens (B, T) start with BOS -> next-token logits (B, T, vocab)."""
        memory = self.encode(source_tokens, source_padding_mask)
        x = self._embed(target_tokens, self.target_embed)
        for block in self.decoder:
            x = block(x, target_padding_mask, memory, source_padding_mask)
        return self._logits(x)

    def decode_step(self, target_tokens: Tensor, memory: Tensor, source_padding_mask: Tensor | None,
                    state: DecoderState | None = None) -> tuple[Tensor, DecoderState]:
        """The next T target tokens (B, T) after those in `state` (None: the first) -> logits (B, T, vocab), state."""
        start = state.length if state is not None else 0
        layer_states = state.layers if state is not None else [None] * len(self.decoder)
        x = self._embed(target_tokens, self.target_embed, start)
        new_states = []
        for block, layer_state in zip(self.decoder, layer_states):
            x, layer_state = block.step(x, layer_state, memory, source_padding_mask)
            new_states.append(layer_state)
        return self._logits(x), DecoderState(start + target_tokens.shape[1], new_states)

    @staticmethod
    def reorder_state(state: DecoderState, index: Tensor) -> DecoderState:
        """Keep the rows `index` of the self-attention states (beam search). Cross-attention states are left
        alone: beams only move within their sentence, whose rows share the same encoder keys and values."""
        return DecoderState(state.length, [(select_rows(own, index), cross) for own, cross in state.layers])
