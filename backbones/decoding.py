"""Greedy decoding and batched beam search for encoder-decoder models, with incremental decoder state.

The model provides `encode(source, padding_mask)`, `decode_step(tokens, memory, padding_mask, state)` (logits
of the newest tokens and the new state) and `reorder_state(state, rows)` (see backbones/seq2seq.py). The
encoder runs once; each step feeds one token per hypothesis, so a softmax decoder reads its KV cache and a
linear decoder updates a state whose size does not depend on the prefix.

Both searches stop a hypothesis at EOS or at its maximum length (`max_lengths`, tokens including EOS, per
sentence: fairseq's a·|source| + b), where EOS is forced, and never emit PAD or BOS. Beam search follows
fairseq's: among the 2K best continuations of the K live hypotheses, those ending in EOS within the first K
are finished, scored by their log-probability / length^length_penalty (length counts EOS); the K best
others go on; a sentence is done when K hypotheses have finished. With K = 1 it is greedy decoding.
Results are (B, L) token ids without BOS and EOS, padded with PAD.
"""
from __future__ import annotations

import torch
from torch import Tensor


def allowed_log_probs(logits: Tensor, step: int, max_lengths: Tensor, *, eos: int, banned: tuple[int, ...]) -> Tensor:
    """log_softmax of logits (N, V) in float32, with `banned` ids impossible and EOS forced at the last step."""
    log_probs = logits.float().log_softmax(dim=-1)
    log_probs[:, list(banned)] = -torch.inf
    last = step >= max_lengths - 1  # (N,)
    forced = torch.full_like(log_probs, -torch.inf)
    forced[:, eos] = 0.0
    return torch.where(last[:, None], forced, log_probs)


def pad_hypotheses(hypotheses: list[list[int]], pad: int, device: torch.device) -> Tensor:
    width = max([len(h) for h in hypotheses] + [1])
    out = torch.full((len(hypotheses), width), pad, dtype=torch.long, device=device)
    for row, tokens in enumerate(hypotheses):
        out[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return out


@torch.no_grad()
def greedy_decode(model, source: Tensor, padding_mask: Tensor | None, max_lengths: Tensor, *, bos: int, eos: int,
                  pad: int) -> Tensor:
    """The most probable next token at every step. source (B, S) -> hypotheses (B, L)."""
    memory = model.encode(source, padding_mask)
    tokens = torch.full((source.shape[0], 1), bos, dtype=torch.long, device=source.device)
    done = torch.zeros(source.shape[0], dtype=torch.bool, device=source.device)
    state = None
    for step in range(int(max_lengths.max())):
        logits, state = model.decode_step(tokens[:, -1:], memory, padding_mask, state)
        log_probs = allowed_log_probs(logits[:, -1], step, max_lengths, eos=eos, banned=(pad, bos))
        following = log_probs.argmax(dim=-1).masked_fill(done, pad)  # (B,)
        tokens = torch.cat([tokens, following[:, None]], dim=1)
        done |= following == eos
        if bool(done.all()):
            break
    generated = tokens[:, 1:]
    ended = (generated == eos).cumsum(dim=1) > 0  # EOS and everything after it
    width = max(1, int((~ended).sum(dim=1).max()))  # the longest hypothesis, as `pad_hypotheses` pads
    return generated.masked_fill(ended, pad)[:, :width]


@torch.no_grad()
def beam_search(model, source: Tensor, padding_mask: Tensor | None, max_lengths: Tensor, *, beam_size: int,
                length_penalty: float, bos: int, eos: int, pad: int) -> Tensor:
    """The best finished hypothesis of a K-beam search per sentence. source (B, S) -> hypotheses (B, L)."""
    batch, beams, device = source.shape[0], beam_size, source.device
    memory = model.encode(source, padding_mask).repeat_interleave(beams, dim=0)  # (B·K, S, dim)
    padding_mask = None if padding_mask is None else padding_mask.repeat_interleave(beams, dim=0)
    row_lengths = max_lengths.repeat_interleave(beams)  # (B·K,)
    tokens = torch.full((batch * beams, 1), bos, dtype=torch.long, device=device)
    scores = torch.zeros(batch, beams, device=device)  # summed log-probabilities of the live hypotheses
    scores[:, 1:] = -torch.inf  # all beams start identical: keep one
    first_row = torch.arange(batch, device=device)[:, None] * beams  # (B, 1)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    state = None
    for step in range(int(max_lengths.max())):
        logits, state = model.decode_step(tokens[:, -1:], memory, padding_mask, state)
        log_probs = allowed_log_probs(logits[:, -1], step, row_lengths, eos=eos, banned=(pad, bos))  # (B·K, V)
        vocab = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(batch, beams * vocab)
        top_scores, top_index = candidates.topk(2 * beams, dim=1)  # (B, 2K), best first
        source_beam, token = top_index // vocab, top_index % vocab
        ends = (token[:, :beams] == eos) & top_scores[:, :beams].isfinite()  # (B, K)
        for b, j in ends.nonzero().tolist():
            if not done[b] and len(finished[b]) < beams:
                history = tokens[first_row[b, 0] + source_beam[b, j], 1:].tolist()
                finished[b].append((top_scores[b, j].item() / (step + 1) ** length_penalty, history))
        for b in range(batch):
            done[b] = done[b] or len(finished[b]) >= beams or step >= int(max_lengths[b]) - 1
        if all(done):
            break
        # the K best continuations that do not end here (at most K of the 2K end in EOS)
        rank = torch.arange(2 * beams, device=device).expand(batch, -1)
        pick = torch.where(token != eos, rank, rank + 2 * beams).argsort(dim=1)[:, :beams]  # (B, K)
        scores = top_scores.gather(1, pick)
        rows = (first_row + source_beam.gather(1, pick)).view(-1)  # (B·K,) the hypotheses continued
        tokens = torch.cat([tokens[rows], token.gather(1, pick).view(-1, 1)], dim=1)
        state = model.reorder_state(state, rows)
    best = [max(hypotheses, key=lambda item: item[0])[1] if hypotheses else [] for hypotheses in finished]
    return pad_hypotheses(best, pad, device)
