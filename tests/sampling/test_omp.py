"""Orthogonal matching pursuit with non-negative weights (sampling/omp.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sievetrain.rng import make_generator
from sievetrain.sampling import nonnegative_omp

PROPERTY = settings(max_examples=30, deadline=None)


@PROPERTY
@given(seed=st.integers(0, 2**32), k=st.integers(1, 6))
def test_omp_recovers_a_planted_sparse_nonnegative_combination(seed, k):
    g = make_generator(seed, "omp")
    columns = torch.randn(120, 40, generator=g, dtype=torch.float64)
    planted = torch.randperm(40, generator=g)[:k]
    weights = 0.5 + 1.5 * torch.rand(k, generator=g, dtype=torch.float64)  # in [0.5, 2]
    target = columns[:, planted] @ weights
    picked, found = nonnegative_omp(columns, target, budget=10, lam=0.0, eps=1e-6)
    assert sorted(picked.tolist()) == sorted(planted.tolist())  # stops once the fit is exact
    order = {int(c): float(w) for c, w in zip(planted, weights, strict=True)}
    torch.testing.assert_close(found, torch.tensor([order[int(c)] for c in picked]).double())


@PROPERTY
@given(seed=st.integers(0, 2**32), budget=st.integers(1, 25), lam=st.sampled_from([0.0, 0.5]))
def test_omp_weights_are_nonnegative_and_never_worse_than_nothing(seed, budget, lam):
    g = make_generator(seed, "omp-any")
    columns = torch.randn(30, 20, generator=g)
    target = torch.randn(30, generator=g)  # not a combination of the columns
    picked, weights = nonnegative_omp(columns, target, budget, lam=lam, eps=1e-6)
    assert len(picked) == len(weights) <= budget
    assert len(set(picked.tolist())) == len(picked)
    assert bool((weights >= 0).all())
    fit = columns.double()[:, picked] @ weights if len(picked) else torch.zeros(30).double()
    assert (target.double() - fit).norm() <= target.double().norm() + 1e-9


def test_omp_takes_nothing_when_no_column_points_towards_the_target():
    columns = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    picked, weights = nonnegative_omp(
        columns, torch.tensor([-1.0, -2.0, 0.0]), budget=2, lam=0.0, eps=1e-6
    )
    assert picked.numel() == 0 and weights.numel() == 0


def test_omp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="budget must be >= 1, got 0"):
        nonnegative_omp(torch.ones(3, 2), torch.ones(3), 0, lam=0.0, eps=1e-6)
    with pytest.raises(ValueError, match="lam=-1"):
        nonnegative_omp(torch.ones(3, 2), torch.ones(3), 1, lam=-1, eps=1e-6)
    with pytest.raises(ValueError, match="target"):
        nonnegative_omp(torch.ones(3, 2), torch.ones(4), 1, lam=0.0, eps=1e-6)
