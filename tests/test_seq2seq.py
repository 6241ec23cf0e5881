"""The encoder-decoder and its searches: incremental decoding equals recomputing the decoder, beam 1 equals
greedy, a wide beam finds the exhaustive optimum, and non-causal decoder mechanisms are refused."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from attention import AttentionSpec
from backbones import build_backbone
from backbones.decoding import beam_search, greedy_decode
from lab.registry import ConfigError

PAD, BOS, EOS = 0, 2, 3


def model(vocab: int = 13, *, decoder_attention: str = "softmax", cross_attention: str = "softmax",
          encoder: str = "softmax", peaky: float = 1.0, seed: int = 0):
    """A small random model in float64; `peaky` scales the embeddings so next-token distributions differ."""
    torch.manual_seed(seed)
    net = build_backbone("seq2seq", vocab_size=vocab, attention=AttentionSpec(encoder), dim=16, encoder_depth=1,
                         decoder_depth=2, num_heads=2, dropout=0.0, decoder_attention=decoder_attention,
                         cross_attention=cross_attention).double().eval()
    with torch.no_grad():
        net.target_embed.weight.mul_(peaky)
    return net


def source_batch(vocab: int = 13, lengths=(7, 4, 1), seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, vocab, (len(lengths), max(lengths)), generator=g)
    padding = torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]
    return tokens.masked_fill(padding, PAD), padding


@pytest.mark.parametrize("decoder_attention,cross_attention",
                         [("softmax", "softmax"), ("luna", "luna"), ("luna", "softmax"), ("linear", "softmax"),
                          ("performer", "luna")])
def test_incremental_decoding_equals_recomputing_the_decoder(decoder_attention, cross_attention):
    net = model(decoder_attention=decoder_attention, cross_attention=cross_attention, encoder="esp")
    source, padding = source_batch()
    target = torch.randint(4, 13, (3, 8), generator=torch.Generator().manual_seed(5))
    target[:, 0] = BOS
    full = net(source, target, padding)  # (B, T, V) teacher forcing over the whole prefix
    memory, state, steps = net.encode(source, padding), None, []
    for t in range(8):
        logits, state = net.decode_step(target[:, t:t + 1], memory, padding, state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("decoder_attention", ["softmax", "luna"])
def test_reordered_states_follow_their_rows(decoder_attention):
    """Rows of one sentence (beams: same source, different prefixes) decoded in a permuted order, with the state
    permuted between steps, give the permuted logits."""
    net = model(decoder_attention=decoder_attention)
    source, padding = source_batch(lengths=(5,))
    source, padding = source.expand(3, -1), padding.expand(3, -1)
    memory = net.encode(source, padding)
    tokens = torch.randint(4, 13, (3, 3), generator=torch.Generator().manual_seed(2))
    _, state = net.decode_step(tokens[:, :2], memory, padding)
    swap = torch.tensor([2, 0, 1])
    moved, _ = net.decode_step(tokens[swap, 2:], memory[swap], padding[swap], net.reorder_state(state, swap))
    straight, _ = net.decode_step(tokens[:, 2:], memory, padding, state)
    torch.testing.assert_close(moved, straight[swap], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("decoder_attention", ["softmax", "luna"])
def test_beam_of_one_is_greedy_decoding(seed, decoder_attention):
    net = model(peaky=6.0, seed=seed, decoder_attention=decoder_attention)
    source, padding = source_batch(seed=seed)
    max_lengths = torch.tensor([9, 6, 3])
    greedy = greedy_decode(net, source, padding, max_lengths, bos=BOS, eos=EOS, pad=PAD)
    beam = beam_search(net, source, padding, max_lengths, beam_size=1, length_penalty=1.0, bos=BOS, eos=EOS,
                       pad=PAD)
    assert torch.equal(greedy, beam)
    assert (greedy != PAD).sum(dim=1).max() > 1, "a degenerate model would make this test vacuous"
    assert ((greedy != PAD).sum(dim=1) <= max_lengths - 1).all()


def exhaustive_best(net, source, padding, max_length: int, vocab: int, length_penalty: float) -> list[int]:
    """The best hypothesis by log-probability / length^penalty (length counts EOS) among all the search may emit:
    up to max_length - 1 tokens (never PAD, BOS or EOS) then EOS, which is forced (free) at the last step."""
    words = [t for t in range(vocab) if t not in (PAD, BOS, EOS)]
    best, best_score = None, -math.inf
    for length in range(max_length):
        for body in itertools.product(words, repeat=length):
            log_probs = net(source, torch.tensor([[BOS, *body]]), padding)[0].log_softmax(-1)  # (length + 1, V)
            score = sum(log_probs[i, token].item() for i, token in enumerate(body))
            if length < max_length - 1:
                score += log_probs[length, EOS].item()
            score /= (length + 1) ** length_penalty
            if score > best_score:
                best, best_score = list(body), score
    return best


def test_a_wide_beam_finds_the_exhaustive_optimum():
    """With more beams than candidates at any step, beam search is exact: it must return the best sequence."""
    vocab, max_length = 7, 4  # 4 emittable words (UNK and 3 others): at most 4 + 4² + 4³ + ... candidates
    for seed in range(3):
        net = model(vocab, peaky=2.0, seed=seed)
        source, padding = source_batch(vocab, lengths=(3,), seed=seed)
        found = beam_search(net, source, padding, torch.tensor([max_length]), beam_size=100, length_penalty=1.0,
                            bos=BOS, eos=EOS, pad=PAD)[0]
        assert [t for t in found.tolist() if t != PAD] == exhaustive_best(net, source, padding, max_length, vocab, 1.0)


def test_a_non_causal_decoder_or_cross_attention_is_refused_naming_the_causal_ones():
    with pytest.raises(ConfigError, match=r"model.decoder_attention=esp.*linear, luna, performer, softmax"):
        model(decoder_attention="esp")
    with pytest.raises(ConfigError, match=r"model.cross_attention=lotformer.*linear, luna, performer, softmax"):
        model(cross_attention="lotformer")
    with pytest.raises(ConfigError, match=r"model.decoder_attention: unknown attention 'sofmax'"):
        model(decoder_attention="sofmax")


def test_gradients_reach_every_parameter_and_padding_changes_nothing_valid():
    net = model(encoder="lotformer").float().train()
    source, padding = source_batch()
    target = torch.randint(4, 13, (3, 6), generator=torch.Generator().manual_seed(4))
    target_padding = torch.arange(6)[None, :] >= torch.tensor([6, 3, 5])[:, None]
    logits = net(source, target, padding, target_padding)
    logits.masked_fill(target_padding[..., None], 0.0).square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"
    net.eval()
    with torch.no_grad():  # one sentence alone, unpadded, gets the logits it gets in the padded batch
        alone = net(source[1:2, :4], target[1:2, :3])
        together = net(source, target, padding, target_padding)[1:2, :3]
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)
