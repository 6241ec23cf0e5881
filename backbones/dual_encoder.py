"""Two-tower classifier of sequence pairs, as the Long Range Arena harness runs its retrieval task.

One `sequence_encoder` (shared weights: the same embeddings, positions, blocks and pooling) encodes
both sequences to pooled vectors u and v; the head reads [u, v, u * v, u - v] (Tay et al. 2021; the
PyTorch harness of Nyströmformer, Skyformer and LOTFormer uses a two-layer MLP there, `head_hidden`).
Neither tower sees the other sequence, so a label that depends on both documents must be read from
how the two embeddings relate.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import register_backbone
from .sequence_encoder import SequenceEncoder


@register_backbone("dual_encoder")
class DualEncoder(SequenceEncoder):
    pooled_per_example = 4

    def forward(self, tokens: Tensor, padding_mask: Tensor | None, tokens_2: Tensor,
                padding_mask_2: Tensor | None = None) -> Tensor:
        """tokens, tokens_2: (B, N1), (B, N2) long; padding masks (B, N1), (B, N2), True = padding
        -> logits (B, num_classes)."""
        u = self.encode(tokens, padding_mask)  # (B, C)
        v = self.encode(tokens_2, padding_mask_2)  # (B, C)
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))  # (B, 4C) -> (B, num_classes)
