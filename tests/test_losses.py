"""Losses and per-sample scores for class and token targets; normalized prediction entropy."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sievetrain.losses import (
    IGNORE_INDEX,
    batch_loss,
    flatten_targets,
    normalized_entropy,
    sample_entropies,
    sample_losses,
)


def test_class_targets_match_cross_entropy():
    logits, y = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), torch.arange(6) % 4
    assert torch.equal(sample_losses(logits, y), F.cross_entropy(logits, y, reduction="none"))
    assert torch.equal(batch_loss(logits, y), F.cross_entropy(logits, y))


def test_token_targets_average_over_the_predicted_positions_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g)  # (B, T, V)
    y = torch.full((3, 5), IGNORE_INDEX)
    y[0, 1], y[0, 3], y[2, 4] = 2, 6, 0  # sample 1 has no predicted position
    losses = sample_losses(logits, y)
    by_hand0 = (
        F.cross_entropy(logits[0, 1:2], y[0, 1:2]) + F.cross_entropy(logits[0, 3:4], y[0, 3:4])
    ) / 2
    assert torch.allclose(losses[0], by_hand0)
    assert losses[1] == 0
    assert torch.allclose(losses[2], F.cross_entropy(logits[2, 4:5], y[2, 4:5]))
    # The batch loss averages over the 3 masked tokens, as BERT does.
    rows, targets, sample = flatten_targets(logits, y)
    assert rows.shape == (3, 7) and sample.tolist() == [0, 0, 2]
    assert torch.allclose(batch_loss(logits, y), F.cross_entropy(rows, targets))
    entropies = sample_entropies(logits, y)
    assert entropies.shape == (3,) and entropies[1] == 0 and 0 < entropies[0] < 1


def test_mismatched_shapes_name_both():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 5\)"):
        sample_losses(torch.zeros(2, 3, 4), torch.zeros(2, 5, dtype=torch.long))


def test_weighted_batch_loss_is_the_weighted_mean_over_predicted_targets():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(4, 3, generator=g), torch.tensor([0, 2, 1, 1])
    w = torch.tensor([1.0, 3.0, 0.0, 2.0])
    per = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(batch_loss(logits, y, w), (per * w).sum() / w.sum())
    torch.testing.assert_close(batch_loss(logits, y, torch.full((4,), 2.5)), batch_loss(logits, y))
    # Tokens: each predicted position takes its sample's weight.
    tokens = torch.randn(2, 3, 5, generator=g)
    t = torch.tensor([[1, IGNORE_INDEX, 4], [IGNORE_INDEX, IGNORE_INDEX, 0]])
    rows = F.cross_entropy(tokens[t != IGNORE_INDEX], t[t != IGNORE_INDEX], reduction="none")
    expected = (rows * torch.tensor([1.0, 1.0, 4.0])).sum() / 6.0
    torch.testing.assert_close(batch_loss(tokens, t, torch.tensor([1.0, 4.0])), expected)


# -- normalized prediction entropy --------------------------------------------------


def test_normalized_entropy_extremes_and_a_worked_value():
    uniform = torch.zeros(3, 10)
    confident = torch.tensor([[1e4, 0.0, 0.0], [0.0, -1e4, 1e4]])
    assert torch.allclose(normalized_entropy(uniform), torch.ones(3))
    assert torch.allclose(normalized_entropy(confident), torch.zeros(2))
    # p = (0.75, 0.25): H = -(0.75 ln 0.75 + 0.25 ln 0.25) / ln 2 = 0.811278...
    logits = torch.tensor([[math.log(3.0), 0.0]])
    assert math.isclose(normalized_entropy(logits).item(), 0.8112781244591328, rel_tol=1e-6)
    assert normalized_entropy(torch.zeros(4, 1)).tolist() == [0.0] * 4


@given(
    st.lists(st.floats(-50, 50), min_size=2, max_size=12),
    st.floats(-1e3, 1e3),
)
def test_normalized_entropy_in_unit_interval_and_shift_invariant(values, shift):
    logits = torch.tensor([values], dtype=torch.float64)
    h = normalized_entropy(logits)
    assert 0 <= h.item() <= 1 + 1e-6
    assert math.isclose(normalized_entropy(logits + shift).item(), h.item(), abs_tol=1e-5)
