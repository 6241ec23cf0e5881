"""Properties every registered backbone must have, parametrised over the backbone registry.

A new backbone gets these tests by adding one row to TINY (its data-shaped constructor arguments, small
options and an example batch); a registered backbone without a row fails, naming what to add. These are
the classifiers (backbones taking `num_classes`); the encoder-decoder has its own in tests/test_seq2seq.py.
"""
from __future__ import annotations

import pytest
import torch

from attention import AttentionSpec
from attention.pooling import PoolingSpec
from backbones import BACKBONES, build_backbone, list_backbones
from lab.registry import code_supplied_parameters

B, NUM_CLASSES = 3, 5
CLASSIFIERS = [n for n in list_backbones() if "num_classes" in code_supplied_parameters(BACKBONES.get(n))]


def _tokens(g: torch.Generator) -> dict[str, torch.Tensor]:
    lengths = torch.tensor([12, 9, 5])
    return {"tokens": torch.randint(1, 11, (B, 12), generator=g),
            "padding_mask": torch.arange(12)[None, :] >= lengths[:, None]}  # (B, N) True = padding


def _token_pairs(g: torch.Generator) -> dict[str, torch.Tensor]:
    second = _tokens(g)
    return {**_tokens(g), "tokens_2": second["tokens"][:, :7].flip(0), "padding_mask_2": second["padding_mask"][:, :7]}


def _features(g: torch.Generator) -> dict[str, torch.Tensor]:
    lengths = torch.tensor([10, 7, 4])
    return {"features": torch.randn(B, 10, 6, generator=g),
            "padding_mask": torch.arange(10)[None, :] >= lengths[:, None]}


# name -> (arguments the task supplies, small options, example batch from a generator)
TINY = {
    "vit": (dict(image_size=8, in_channels=3), dict(patch_size=4, dim=16, depth=1, num_heads=2),
            lambda g: {"images": torch.randn(B, 3, 8, 8, generator=g)}),
    "point_transformer": (dict(in_channels=3), dict(dim=16, depth=1, num_heads=2, neighbours=4, num_tokens=8,
                                                    head_hidden=16),
                          lambda g: {"points": torch.rand(B, 20, 3, generator=g) * 2 - 1}),
    "set_transformer": (dict(in_channels=3), dict(dim=16, depth=1, num_heads=2, num_inducing=4),
                        lambda g: {"points": torch.rand(B, 20, 3, generator=g) * 2 - 1}),
    "sequence_encoder": (dict(vocab_size=11, max_length=12), dict(dim=16, depth=1, num_heads=2), _tokens),
    "set_pooler": (dict(input_dim=6), dict(dim=16, depth=1, num_heads=2), _features),
    "dual_encoder": (dict(vocab_size=11, max_length=12), dict(dim=16, depth=1, num_heads=2, head_hidden=8),
                     _token_pairs),
}


def tiny(name: str):
    """A small softmax model of backbone `name` with its default pooling, and an example batch."""
    if name not in TINY:
        pytest.fail(f"backbone '{name}' is registered but has no row in TINY (tests/test_backbones.py): "
                    "add its task-supplied arguments, small options and an example batch")
    supplied, options, batch = TINY[name]
    torch.manual_seed(0)
    model = build_backbone(name, num_classes=NUM_CLASSES, attention=AttentionSpec("softmax"),
                           pooling=PoolingSpec(None), **supplied, **options)
    return model, batch(torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_logits_are_finite_and_gradients_reach_every_parameter(name):
    model, batch = tiny(name)
    logits = model(**batch)
    assert logits.shape == (B, NUM_CLASSES) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_each_example_is_classified_independently_of_the_rest_of_the_batch(name):
    model, batch = tiny(name)
    model.eval()
    with torch.no_grad():
        together = model(**batch)
        alone = torch.cat([model(**{key: value[i:i + 1] for key, value in batch.items()}) for i in range(B)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_grid_sincos_positions_code_the_pixel_grid():
    from backbones.sequence_encoder import SequenceEncoder, grid_sincos
    from lab.registry import ConfigError

    table = grid_sincos(16 * 16, 34, std=0.3)  # 34 = 4 x 8 + 2 leftover dims
    assert table.shape == (256, 34) and torch.allclose(table.std(), torch.tensor(0.3))
    assert torch.all(table[:, 32:] == 0)
    codes = table.reshape(16, 16, 34)
    # pixel (5, 5) is more like its neighbours than like pixels further away, along both axes
    similarity = torch.nn.functional.cosine_similarity(codes, codes[5, 5], dim=-1)  # (16, 16)
    assert similarity[5, 6] > similarity[5, 9] > similarity[5, 14]
    assert similarity[6, 5] > similarity[9, 5] > similarity[14, 5]
    assert not torch.allclose(codes[5, 6], codes[6, 5])  # rows and columns differ
    model = SequenceEncoder(num_classes=2, vocab_size=256, max_length=256, attention=AttentionSpec("softmax", {}),
                            pooling=PoolingSpec("max", {}), dim=16, depth=1, num_heads=2,
                            position_init="grid_sincos", embedding_std=0.3)
    assert torch.equal(model.pos_embed[0], grid_sincos(256, 16, std=0.3))
    assert model.pos_embed.requires_grad
    with pytest.raises(ConfigError, match="square number of positions"):
        SequenceEncoder(num_classes=2, vocab_size=256, max_length=1000, attention=AttentionSpec("softmax", {}),
                        pooling=PoolingSpec("mean", {}), dim=16, depth=1, num_heads=2, position_init="grid_sincos")
