"""Coverage theory of Soft Random Sampling and RS2, checked exactly and by the real samplers."""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sievetrain.sampling import (
    CoverageTracker,
    SoftRandomSampler,
    expected_coverage,
    expected_epochs_to_full_coverage,
    subset_size,
)
from sievetrain.sampling.coverage import rs2_coverage, rs2_epochs_to_full_coverage
from sievetrain.sampling.rs2 import RS2Sampler


def _harmonic(n: int) -> Fraction:
    return sum((Fraction(1, k) for k in range(1, n + 1)), Fraction(0))


# --- expected coverage ---------------------------------------------------------------------

# METHODS.md §1: the paper's table of expected % covered after K epochs.
PAPER_TABLE = {
    0.05: {10: 40.1, 20: 64.2, 30: 78.5},
    0.10: {10: 65.1, 20: 87.8, 30: 95.8},
    0.20: {10: 89.3, 20: 98.8, 30: 99.9},
}


@pytest.mark.parametrize("ratio", sorted(PAPER_TABLE))
def test_expected_coverage_reproduces_the_papers_table(ratio):
    n = 100_000
    m = subset_size(n, ratio)
    for epochs, percent in PAPER_TABLE[ratio].items():
        assert round(100 * expected_coverage(n, m, epochs), 1) == percent


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), data=st.data(), epochs=st.integers(0, 8))
def test_replacement_variant_matches_the_exact_rational(n, data, epochs):
    m = data.draw(st.integers(1, n))
    exact = 1 - (1 - Fraction(1, n)) ** (m * epochs)
    assert math.isclose(expected_coverage(n, m, epochs, True), exact, rel_tol=1e-12, abs_tol=0)


def test_expected_coverage_edge_cases():
    assert expected_coverage(10, 3, 0) == 0.0
    assert expected_coverage(10, 10, 1) == 1.0  # the whole set in one epoch
    assert expected_coverage(10, 1, 1) == pytest.approx(0.1)
    assert expected_coverage(10, 1, 1, within_epoch_replacement=True) == pytest.approx(0.1)
    # Distinct draws cover more than i.i.d. ones; both grow with the epochs.
    assert expected_coverage(100, 10, 5) > expected_coverage(100, 10, 5, True)
    assert expected_coverage(100, 10, 6) > expected_coverage(100, 10, 5)
    # Tiny coverage keeps its relative precision (no 1 - (1 - tiny) cancellation).
    assert math.isclose(expected_coverage(10**9, 1, 1, True), 1e-9, rel_tol=1e-12)


# --- expected epochs to full coverage -----------------------------------------------------


def test_epochs_to_full_coverage_matches_the_methods_check_value():
    assert round(float(expected_epochs_to_full_coverage(30, 5)), 3) == 22.714


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 30, 60])
def test_one_sample_per_epoch_is_the_coupon_collector(n):
    assert expected_epochs_to_full_coverage(n, 1) == n * _harmonic(n)
    assert expected_epochs_to_full_coverage(n, 1, within_epoch_replacement=True) == n * _harmonic(n)


@pytest.mark.parametrize("n", [1, 4, 17])
def test_the_whole_set_per_epoch_takes_one_epoch(n):
    assert expected_epochs_to_full_coverage(n, n) == 1


def test_epochs_to_full_coverage_small_case_by_hand():
    # n=2, m=1 i.i.d.: a geometric wait for the second coupon: 1 + 2 = 3 epochs.
    assert expected_epochs_to_full_coverage(2, 1, within_epoch_replacement=True) == 3
    # n=3, m=2 distinct: epoch 1 misses one sample, then each epoch finds it w.p. 2/3: 1 + 3/2.
    assert expected_epochs_to_full_coverage(3, 2) == Fraction(5, 2)


# --- the real sampler against the theory ---------------------------------------------------


def _coverage_after(sampler: SoftRandomSampler, epochs: int) -> float:
    tracker = CoverageTracker(sampler.n)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        tracker.update(sampler.epoch_indices())
    return tracker.fraction


@pytest.mark.parametrize("replacement", [False, True])
def test_simulated_coverage_matches_expected_coverage(replacement):
    n, ratio, epochs, runs = 200, 0.1, 10, 300
    m = subset_size(n, ratio)
    fractions = [
        _coverage_after(
            SoftRandomSampler(n, ratio, seed=seed, within_epoch_replacement=replacement), epochs
        )
        for seed in range(runs)
    ]
    mean, stderr = statistics.fmean(fractions), statistics.stdev(fractions) / math.sqrt(runs)
    assert abs(mean - expected_coverage(n, m, epochs, replacement)) < 4 * stderr
    # The check can tell the two schemes apart: the other formula is many errors away.
    other = expected_coverage(n, m, epochs, not replacement)
    assert abs(mean - other) > 8 * stderr


def _epochs_to_see_everything(sampler: SoftRandomSampler) -> int:
    seen, epoch = set(), 0  # a set rather than a CoverageTracker: this loop runs ~24k times
    while len(seen) < sampler.n:
        sampler.set_epoch(epoch)
        seen.update(sampler.epoch_indices().tolist())
        epoch += 1
    return epoch


@pytest.mark.parametrize("replacement", [False, True])
def test_simulated_epochs_to_full_coverage_match_the_exact_formula(replacement):
    n, ratio, runs = 12, 0.25, 1000
    counts = [
        _epochs_to_see_everything(
            SoftRandomSampler(n, ratio, seed=seed, within_epoch_replacement=replacement)
        )
        for seed in range(runs)
    ]
    mean, stderr = statistics.fmean(counts), statistics.stdev(counts) / math.sqrt(runs)
    expected = float(expected_epochs_to_full_coverage(n, 3, within_epoch_replacement=replacement))
    assert abs(mean - expected) < 4 * stderr


# --- the tracker ---------------------------------------------------------------------------


def test_coverage_tracker_counts_distinct_samples():
    tracker = CoverageTracker(10)
    assert (tracker.seen, tracker.fraction) == (0, 0.0)
    tracker.update(torch.tensor([1, 1, 3]))
    tracker.update(torch.tensor([[3, 9], [1, 0]]))
    tracker.update(torch.tensor([], dtype=torch.long))
    assert (tracker.seen, tracker.fraction) == (4, 0.4)


def test_coverage_tracker_state_round_trip():
    tracker = CoverageTracker(6)
    tracker.update(torch.tensor([0, 5]))
    restored = CoverageTracker(6)
    restored.load_state_dict(tracker.state_dict())
    tracker.update(torch.tensor([2]))  # the saved state is a snapshot
    assert restored.seen == 2
    restored.update(torch.tensor([2, 3]))
    assert restored.seen == 4
    with pytest.raises(ValueError, match=r"\(7,\)"):
        CoverageTracker(6).load_state_dict(CoverageTracker(7).state_dict())


# --- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: expected_coverage(0, 1, 1), "n must be a positive integer, got 0"),
        (lambda: expected_coverage(10, 0, 1), "m must be a positive integer, got 0"),
        (lambda: expected_coverage(10, 11, 1), "m must be <= n=10, got 11"),
        (lambda: expected_coverage(10, 2, -1), "got -1"),
        (lambda: expected_coverage(10, 2, 1.5), "got 1.5"),
        (lambda: expected_epochs_to_full_coverage(5, 6), "got 6"),
        (lambda: expected_epochs_to_full_coverage(-2, 1), "got -2"),
        (lambda: CoverageTracker(0), "got 0"),
        (lambda: CoverageTracker(5).update(torch.tensor([0, 5])), "index 5 .* n=5"),
        (lambda: CoverageTracker(5).update(torch.tensor([-1])), "index -1"),
    ],
)
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- RS2: subsets without replacement across epochs ----------------------------------------


@pytest.mark.parametrize(
    ("n", "ratio", "epochs"),
    [(1000, 0.1, 7), (1000, 0.1, 10), (1000, 0.3, 3), (1000, 0.3, 4), (97, 0.2, 5), (97, 0.2, 6)]
    + [(50, 0.06, 20), (13, 1.0, 2), (200, 0.35, 9)],
)
def test_rs2_coverage_is_exact_for_every_seed(n, ratio, epochs):
    # m does not divide n in (1000, 0.3), (97, 0.2), (50, 0.06) and (200, 0.35).
    m = subset_size(n, ratio)
    expected = rs2_coverage(n, m, epochs)
    assert expected == min(1.0, epochs * m / n)
    for seed in range(5):
        tracker = CoverageTracker(n)
        sampler = RS2Sampler(n, ratio, seed=seed)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            tracker.update(sampler.epoch_indices())
        assert tracker.seen == min(n, epochs * m)
        assert tracker.fraction == expected


@pytest.mark.parametrize(("n", "ratio"), [(1000, 0.1), (1000, 0.3), (97, 0.2), (12, 0.25)])
def test_rs2_sees_everything_exactly_at_ceil_n_over_m_epochs(n, ratio):
    m = subset_size(n, ratio)
    epochs = rs2_epochs_to_full_coverage(n, m)
    assert epochs == math.ceil(n / m)
    sampler, seen = RS2Sampler(n, ratio, seed=4), set()
    for epoch in range(epochs):
        assert len(seen) < n
        sampler.set_epoch(epoch)
        seen.update(sampler.epoch_indices().tolist())
    assert len(seen) == n


def test_rs2_covers_at_least_as_much_as_srs():
    for n, m in [(100, 10), (1000, 300), (97, 19)]:
        for epochs in range(0, 12):
            rs2, srs = rs2_coverage(n, m, epochs), expected_coverage(n, m, epochs)
            assert rs2 >= srs
            if 2 <= epochs and m < n:
                assert rs2 > srs  # SRS's later epochs spend draws on samples already seen
    for n, m in [(30, 5), (12, 3), (20, 7)]:
        assert rs2_epochs_to_full_coverage(n, m) < expected_epochs_to_full_coverage(n, m)


def test_rs2_coverage_edge_cases():
    assert rs2_coverage(10, 3, 0) == 0.0
    assert rs2_coverage(10, 3, 3) == 0.9
    assert rs2_coverage(10, 3, 4) == 1.0
    assert rs2_coverage(10, 10, 1) == 1.0
    assert rs2_epochs_to_full_coverage(10, 3) == 4
    assert rs2_epochs_to_full_coverage(10, 10) == 1
    assert rs2_epochs_to_full_coverage(1, 1) == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: rs2_coverage(0, 1, 1), "n must be a positive integer, got 0"),
        (lambda: rs2_coverage(10, 0, 1), "m must be a positive integer, got 0"),
        (lambda: rs2_coverage(10, 11, 1), "m must be <= n=10, got 11"),
        (lambda: rs2_coverage(10, 2, -1), "epochs must be a non-negative integer, got -1"),
        (lambda: rs2_coverage(10, 2, 1.5), "got 1.5"),
        (lambda: rs2_coverage(10, 2, True), "got True"),
        (lambda: rs2_epochs_to_full_coverage(5, 6), "got 6"),
        (lambda: rs2_epochs_to_full_coverage(-2, 1), "got -2"),
    ],
)
def test_rs2_coverage_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
