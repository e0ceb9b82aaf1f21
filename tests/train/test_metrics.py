"""Normalized prediction entropy."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from sievetrain.train import normalized_entropy


def test_extremes_and_a_worked_value():
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
def test_in_unit_interval_and_shift_invariant(values, shift):
    logits = torch.tensor([values], dtype=torch.float64)
    h = normalized_entropy(logits)
    assert 0 <= h.item() <= 1 + 1e-6
    assert math.isclose(normalized_entropy(logits + shift).item(), h.item(), abs_tol=1e-5)
