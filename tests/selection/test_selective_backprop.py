"""Selective Backprop: keep probabilities from the loss history, the first epoch kept
whole, kept samples in full batches, state round trips, and bad arguments."""

import math

import pytest
import torch

from sievetrain.options import RunContext
from sievetrain.selection import SelectiveBackprop, SelectiveBackpropOptions, keep_probabilities
from sievetrain.selection.selective_backprop import expected_keep_fraction, sample_proportional


def test_keep_probability_is_the_loss_percentile_to_the_beta():
    history = torch.arange(1.0, 11.0)  # 1..10
    probs = keep_probabilities(torch.tensor([10.0, 5.0, 1.0]), history, beta=2.0, min_prob=0.05)
    assert torch.allclose(probs, torch.tensor([1.0, 0.25, 0.05], dtype=torch.float64))


def test_expected_keep_fraction_is_the_mean_keep_probability():
    """E[max(s, U^β)]: the fixed share kept per batch under DDP, and the budget's."""
    u = (torch.arange(1_000_000, dtype=torch.float64) + 0.5) / 1_000_000  # U on a fine grid
    for beta, s in [(3.0, 0.05), (1.0, 0.0), (0.5, 0.3)]:
        expected = expected_keep_fraction(beta=beta, min_prob=s)
        assert expected == pytest.approx(u.pow(beta).clamp_min(s).mean().item(), abs=1e-6)
    context = RunContext(n=100, batch_size=10, epochs=4, num_classes=10)
    options = SelectiveBackpropOptions(full_epochs=0)
    assert options.backprop_fraction(context) == expected_keep_fraction(beta=3.0, min_prob=0.05)


def test_sample_proportional_draws_k_distinct_positions_in_proportion():
    probs = torch.tensor([0.0, 1.0, 0.05, 1.0, 0.0, 0.5], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    for _ in range(2000):
        keep = sample_proportional(probs, 3, generator=generator)
        assert keep.tolist() == sorted(set(keep.tolist())) and len(keep) == 3
        counts[keep] += 1
    assert counts[0] == counts[4] == 0  # a zero probability is never drawn
    assert counts[1] > counts[5] > counts[2] > 0
    assert len(sample_proportional(probs, 0, generator=generator)) == 0


def test_selective_backprop_keeps_the_first_epoch_and_fills_full_batches(mnist1d, train):
    selector = SelectiveBackprop(3.0, seed=0)
    trainer, summary = train(mnist1d, selector, epochs=3)
    n = len(mnist1d.train)
    kept_later = summary.samples_backpropagated - n
    # First epoch whole; afterwards about E[p^3] = 1/4 of the samples (plus the floor).
    assert 0.15 * 2 * n < kept_later < 0.4 * 2 * n
    # Kept samples go in full batches of 64: one short remainder per selecting epoch.
    later_steps = summary.optimizer_steps - math.ceil(n / 64)
    assert later_steps - math.ceil(kept_later / 64) in (0, 1)
    assert summary.samples_forwarded_fully == summary.samples_backpropagated + 2 * n
    assert summary.final_exit_spearman == pytest.approx(1.0)


def test_selective_backprop_round_trips_through_state_dict(round_trip):
    straight, expected, resumed, got = round_trip(
        lambda: SelectiveBackprop(2.0, history=100, full_epochs=0, seed=3)
    )
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert resumed.stats() == straight.stats()


# -- bad input --------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda: SelectiveBackprop(0.0), "beta=0.0"),
        (lambda: SelectiveBackprop(3.0, min_prob=1.5), "min_prob=1.5"),
        (lambda: SelectiveBackprop(3.0, history=0), "history=0"),
    ],
)
def test_bad_arguments_name_the_value(build, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        build()
