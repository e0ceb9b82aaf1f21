"""Evaluation metrics: Spearman rank correlation (normalized entropy lives in losses)."""

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy.stats import spearmanr

from sievetrain.losses import normalized_entropy
from sievetrain.train import metrics
from sievetrain.train.metrics import spearman


def test_normalized_entropy_is_the_losses_function_re_exported():
    assert metrics.normalized_entropy is normalized_entropy


def test_spearman_worked_values():
    a = torch.tensor([0.1, 0.5, 0.3, 0.9])
    assert spearman(a, a * 10 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ranks (0, 2, 1, 3) against (0, 1, 2, 3): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(a, torch.arange(4.0)) == pytest.approx(0.8)
    assert math.isnan(spearman(a, torch.ones(4)))


def test_spearman_gives_ties_their_average_rank():
    # Ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4): deviations (-1.5, 0, 0, 1.5) and
    # (-1.5, -0.5, 0.5, 1.5), so rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9). Ranking the
    # tie by position would give 1.
    a = torch.tensor([1.0, 2.0, 2.0, 3.0])
    assert spearman(a, torch.arange(4.0)) == pytest.approx(math.sqrt(0.9), abs=1e-12)
    assert spearman(torch.arange(4.0), a) == pytest.approx(math.sqrt(0.9), abs=1e-12)


def test_spearman_is_nan_below_two_entries_and_rejects_mismatched_shapes():
    assert math.isnan(spearman(torch.tensor([1.0]), torch.tensor([2.0])))
    assert math.isnan(spearman(torch.tensor([]), torch.tensor([])))
    with pytest.raises(ValueError, match=r"\[3\].*\[4\]"):
        spearman(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="1-D"):
        spearman(torch.zeros(2, 2), torch.zeros(2, 2))


@st.composite
def _pairs_with_ties(draw):
    """Two equal-length lists of small integers (2..50 entries): ties are frequent."""
    n = draw(st.integers(2, 50))
    values = st.lists(st.integers(-3, 3), min_size=n, max_size=n)
    return draw(values), draw(values)


@given(_pairs_with_ties())
def test_spearman_matches_scipy_with_ties(pair):
    a, b = pair
    assume(len(set(a)) > 1 and len(set(b)) > 1)  # constant input: NaN, tested above
    expected = spearmanr(a, b).statistic
    got = spearman(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    assert got == pytest.approx(expected, abs=1e-9)
