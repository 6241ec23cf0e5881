"""LapSum soft permutations against their definition: thresholds by bisection, doubly stochastic rows and
columns, the sorting permutation in the limit, implicit gradients against finite differences."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attention.pooling.lapsum import lapsum_matrix
from attention.pooling.sliced import sort_valid_first


def laplace_cdf(z: np.ndarray) -> np.ndarray:
    return np.where(z <= 0, 0.5 * np.exp(np.minimum(z, 0)), 1 - 0.5 * np.exp(-np.maximum(z, 0)))


def matrix_by_bisection(values: np.ndarray, temperature: float) -> np.ndarray:
    """(n, n): b_k from Σ_i F((b − s_i)/α) = k by bisection, row k = q_{k+1} − q_k, q_0 = 0, q_n = 1."""
    n = len(values)
    members = [np.zeros(n)]
    for k in range(1, n):
        low, high = values.min() - 50 * temperature, values.max() + 50 * temperature
        for _ in range(200):
            middle = (low + high) / 2
            low, high = (middle, high) if laplace_cdf((middle - values) / temperature).sum() < k else (low, middle)
        members.append(laplace_cdf(((low + high) / 2 - values) / temperature))
    members.append(np.ones(n))
    return np.diff(np.stack(members), axis=0)


def soft_permutations(values: torch.Tensor, lengths: list[int], temperature: float) -> torch.Tensor:
    """(B, n, n) for values (B, n) with `lengths[b]` valid elements in front."""
    mask = torch.arange(values.shape[1])[None] >= torch.tensor(lengths)[:, None]
    anchors = sort_valid_first(values.unsqueeze(-1), mask)[0][..., 0]
    return lapsum_matrix(anchors, values, mask, temperature)


@pytest.mark.parametrize("temperature", [0.05, 1.0, 10.0])
def test_lapsum_equals_its_definition_and_is_doubly_stochastic_over_valid_elements(temperature):
    values = torch.randn(3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    lengths = [9, 5, 2]
    matrices = soft_permutations(values, lengths, temperature)
    for b, n in enumerate(lengths):
        valid = matrices[b, :n, :n]
        np.testing.assert_allclose(valid.numpy(), matrix_by_bisection(values[b, :n].numpy(), temperature), atol=1e-9)
        torch.testing.assert_close(valid.sum(0), torch.ones(n, dtype=torch.float64))
        torch.testing.assert_close(valid.sum(1), torch.ones(n, dtype=torch.float64))
        assert valid.min() >= 0 and matrices[b, n:].abs().sum() == 0 and matrices[b, :, n:].abs().sum() == 0


def test_lapsum_becomes_the_sorting_permutation_as_the_temperature_goes_to_zero():
    values = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    hard = torch.eye(8, dtype=torch.float64)[values.argsort(-1)]  # row k = element of rank k, ascending
    errors = [(soft_permutations(values, [8, 8], t) - hard).abs().max().item() for t in (1.0, 0.1, 1e-3, 1e-6)]
    assert errors[0] > 0.1 and errors == sorted(errors, reverse=True) and errors[-1] < 1e-12, errors


def test_lapsum_gradients_match_finite_differences():
    values = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    torch.autograd.gradcheck(lambda v: soft_permutations(v, [6, 4], 0.7), (values,))
