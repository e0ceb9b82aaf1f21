"""Selective Backprop: keep probabilities from the loss history, the first epoch kept
whole, kept samples in full batches, state round trips, and bad arguments."""

import math

import pytest
import torch

from sievetrain.selection import SelectiveBackprop, keep_probabilities


def test_keep_probability_is_the_loss_percentile_to_the_beta():
    history = torch.arange(1.0, 11.0)  # 1..10
    probs = keep_probabilities(torch.tensor([10.0, 5.0, 1.0]), history, beta=2.0, min_prob=0.05)
    assert torch.allclose(probs, torch.tensor([1.0, 0.25, 0.05], dtype=torch.float64))


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
