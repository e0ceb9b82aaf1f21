"""RS2 (subsets without replacement across epochs): the stream of full-data passes it walks
through, its equivalence with full data on a compressed budget, ranks, and resuming."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sievetrain.options import RunContext
from sievetrain.sampling.rs2 import FullOptions, RS2Options, RS2Sampler, rs2_indices
from sievetrain.sampling.srs import SoftRandomSampler, soft_random_indices, subset_size

PROPERTY = settings(max_examples=40, deadline=None)

seeds = st.integers(0, 2**32)
ratios = st.floats(0.01, 1.0)


def _full_data_stream(n: int, seed: int, length: int) -> list[int]:
    """The first ``length`` indices of full data's epochs, one after another (SRS at ratio 1)."""
    sampler, out, epoch = SoftRandomSampler(n, 1.0, seed=seed), [], 0
    while len(out) < length:
        sampler.set_epoch(epoch)
        out += list(sampler)
        epoch += 1
    return out[:length]


def _rs2_run(n: int, ratio: float, seed: int, epochs: int, **ranks: int) -> list[list[int]]:
    sampler = RS2Sampler(n, ratio, seed=seed, **ranks)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


# --- degenerate case: ratio 1 is full data --------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 12345])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_ratio_one_is_full_data_epoch_by_epoch(n, seed):
    full, rs2 = SoftRandomSampler(n, 1.0, seed=seed), RS2Sampler(n, 1.0, seed=seed)
    for epoch in [0, 1, 2, 3, 10, 57]:
        full.set_epoch(epoch)
        rs2.set_epoch(epoch)
        assert torch.equal(rs2.epoch_indices(), full.epoch_indices())
        assert torch.equal(rs2_indices(n, 1.0, seed=seed, epoch=epoch), full.epoch_indices())


def test_default_full_options_are_plain_full_data():
    budget = FullOptions().budget
    assert budget == 1.0
    assert _rs2_run(50, budget, 3, 4) == [
        soft_random_indices(50, 1.0, seed=3, epoch=e).tolist() for e in range(4)
    ]


# --- full data on a compressed budget --------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "ratio", "epochs"),
    [(1000, 0.1, 20), (1000, 0.25, 8), (1000, 0.3, 10), (1000, 0.5, 6), (40, 0.75, 4)],
)
def test_e_epochs_at_ratio_r_are_the_first_r_e_full_data_epochs_chunked(n, ratio, epochs):
    # r·E and r·n are integers; at 0.3 and 0.75 m does not divide n: epochs straddle passes.
    full_epochs = round(ratio * epochs)
    assert subset_size(n, ratio) * epochs == full_epochs * n
    rs2 = [i for chunk in _rs2_run(n, ratio, 5, epochs) for i in chunk]
    full = [i for e in range(full_epochs) for i in soft_random_indices(n, 1.0, seed=5, epoch=e)]
    assert rs2 == [int(i) for i in full]


@PROPERTY
@given(n=st.integers(1, 300), ratio=ratios, seed=seeds, epochs=st.integers(1, 12))
def test_rs2_is_a_prefix_of_the_full_data_stream(n, ratio, seed, epochs):
    assume(ratio * n >= 0.5)
    m = subset_size(n, ratio)
    run = _rs2_run(n, ratio, seed, epochs)
    assert all(len(chunk) == m for chunk in run)
    assert [i for chunk in run for i in chunk] == _full_data_stream(n, seed, epochs * m)


# --- without replacement across epochs -------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.25, 0.5])
def test_every_sample_once_per_ceil_one_over_r_epochs_when_m_divides_n(ratio):
    n, seed = 1000, 11
    period = math.ceil(1 / ratio)
    assert subset_size(n, ratio) * period == n
    run = _rs2_run(n, ratio, seed, 3 * period)
    for start in range(0, 3 * period, period):
        block = [i for chunk in run[start : start + period] for i in chunk]
        assert sorted(block) == list(range(n))


@PROPERTY
@given(m=st.integers(1, 60), period=st.integers(1, 8), seed=seeds, offset=st.integers(0, 20))
def test_every_sample_once_per_pass_for_any_divisor(m, period, seed, offset):
    n = m * period
    epochs = [rs2_indices(n, m / n, seed=seed, epoch=offset * period + k) for k in range(period)]
    assert sorted(torch.cat(epochs).tolist()) == list(range(n))


@PROPERTY
@given(n=st.integers(2, 400), ratio=ratios, seed=seeds, epoch=st.integers(0, 40))
def test_consecutive_epochs_within_a_pass_are_disjoint(n, ratio, seed, epoch):
    assume(ratio * n >= 0.5)
    m = subset_size(n, ratio)
    this = rs2_indices(n, ratio, seed=seed, epoch=epoch).tolist()
    after = rs2_indices(n, ratio, seed=seed, epoch=epoch + 1).tolist()
    assert len(this) == m and all(0 <= i < n for i in this)
    in_one_pass = (epoch * m) // n == ((epoch + 2) * m - 1) // n
    if in_one_pass:
        assert len(set(this) | set(after)) == 2 * m


def test_an_epoch_straddling_two_passes_ends_one_and_starts_the_next():
    n, seed = 10, 4  # m = 3: epoch 3 is positions 9..11, the last of pass 0 and two of pass 1
    first, second = (soft_random_indices(n, 1.0, seed=seed, epoch=p).tolist() for p in (0, 1))
    assert rs2_indices(n, 0.3, seed=seed, epoch=3).tolist() == first[9:] + second[:2]


def test_a_late_epoch_is_cheap_and_correct():
    # Epoch 10**6 at m = 3 of n = 10 sits in pass 300_000: only that pass is computed.
    epoch, m, n = 10**6, 3, 10
    p, start = divmod(epoch * m, n)
    expected = soft_random_indices(n, 1.0, seed=2, epoch=p)[start : start + m]
    assert torch.equal(rs2_indices(n, 0.3, seed=2, epoch=epoch), expected)


# --- ranks -----------------------------------------------------------------------------------


@PROPERTY
@given(
    n=st.integers(1, 400),
    ratio=ratios,
    seed=seeds,
    epoch=st.integers(0, 12),
    replicas=st.integers(1, 5),
)
def test_ranks_are_in_lockstep_and_partition_the_global_chunk(n, ratio, seed, epoch, replicas):
    assume(ratio * n >= 0.5 and subset_size(n, ratio) >= replicas)
    shards = [
        rs2_indices(n, ratio, seed=seed, epoch=epoch, num_replicas=replicas, rank=r).tolist()
        for r in range(replicas)
    ]
    size = len(shards[0])
    assert all(len(shard) == size for shard in shards)  # lockstep
    m = subset_size(n, ratio) // replicas * replicas  # rounded DOWN to a multiple of replicas
    assert size * replicas == m
    # Interleaving the shards gives the epoch's global chunk: rank k holds positions k::replicas.
    interleaved = [shard[i] for i in range(size) for shard in shards]
    assert interleaved == _full_data_stream(n, seed, (epoch + 1) * m)[epoch * m :]
    if len(set(interleaved)) == m:  # no repeat in the chunk (always, unless it straddles passes)
        assert sum(len(set(shard)) for shard in shards) == len(set().union(*shards))


def test_ranks_with_m_dividing_n_see_every_sample_once_per_pass_together():
    n, ratio, replicas = 1200, 0.25, 4
    shards = [_rs2_run(n, ratio, 9, 4, num_replicas=replicas, rank=r) for r in range(replicas)]
    seen = [i for shard in shards for chunk in shard for i in chunk]
    assert sorted(seen) == list(range(n))
    assert RS2Sampler(n, ratio, num_replicas=replicas).subset_size == 300


def test_too_many_replicas_for_the_epoch_is_an_error():
    with pytest.raises(ValueError, match="2 samples < 3 ranks"):
        rs2_indices(10, 0.2, seed=0, epoch=0, num_replicas=3, rank=0)


# --- the sampler: attributes, state, resume ----------------------------------------------------


def test_sampler_exposes_its_arguments_and_options():
    sampler = RS2Sampler(100, 0.2, seed=3, num_replicas=2, rank=1)
    assert (sampler.n, sampler.ratio, sampler.seed, sampler.num_replicas, sampler.rank) == (
        100, 0.2, 3, 2, 1,
    )  # fmt: skip
    assert sampler.options == RS2Options(ratio=0.2)
    assert sampler.subset_size == 20 and len(sampler) == 10
    assert sampler.stats() == {}
    assert RS2Sampler(10).ratio == RS2Options.ratio
    with pytest.raises(AttributeError, match="interval"):
        sampler.interval  # noqa: B018


@PROPERTY
@given(
    n=st.integers(1, 300),
    ratio=ratios,
    seed=seeds,
    epoch=st.integers(0, 20),
    cut=st.floats(0, 1),
    set_epoch_again=st.booleans(),
)
def test_mid_epoch_state_round_trip(n, ratio, seed, epoch, cut, set_epoch_again):
    assume(ratio * n >= 0.5)
    original = RS2Sampler(n, ratio, seed=seed)
    original.set_epoch(epoch)
    full = original.epoch_indices().tolist()
    k = int(cut * len(full))
    iterator = iter(original)
    consumed = [next(iterator) for _ in range(k)]
    assert consumed == full[:k] and original.position == k
    state = torch.load(io.BytesIO(_saved(original.state_dict())), weights_only=True)

    resumed = RS2Sampler(n, ratio, seed=seed)
    resumed.load_state_dict(state)
    assert resumed.position == k and len(resumed) == len(full)
    if set_epoch_again:  # the usual top-of-loop call must not lose the resume point
        resumed.set_epoch(epoch)
    assert consumed + list(resumed) == full  # bitwise the straight run
    assert list(resumed) == full  # resuming happens once; iterating again restarts the epoch
    resumed.set_epoch(epoch + 1)
    assert list(resumed) == rs2_indices(n, ratio, seed=seed, epoch=epoch + 1).tolist()


def _saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (RS2Sampler(100, 0.3, seed=2), "seed=2"),
        (RS2Sampler(100, 0.2, seed=1), "ratio=0.2"),
        (RS2Sampler(90, 0.3, seed=1), "n=90"),
        (RS2Sampler(100, 0.3, seed=1, num_replicas=2, rank=1), "num_replicas=2"),
        (SoftRandomSampler(100, 0.3, seed=1), "granularity='sample'"),
    ],
)
def test_load_state_dict_refuses_a_foreign_config(other, message):
    with pytest.raises(ValueError, match=message):
        RS2Sampler(100, 0.3, seed=1).load_state_dict(other.state_dict())


def test_global_torch_rng_is_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    sampler = RS2Sampler(500, 0.3, seed=8)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        list(sampler)
    rs2_indices(500, 0.7, seed=1, epoch=3, num_replicas=2, rank=1)
    assert torch.equal(torch.get_rng_state(), before)


# --- options and bad arguments ---------------------------------------------------------------


CONTEXT = RunContext(n=1000, batch_size=32, epochs=20, num_classes=10, seed=0)


def test_options_report_their_backprop_fraction():
    assert RS2Options(ratio=0.2).backprop_fraction(CONTEXT) == 0.2
    assert FullOptions(budget=0.3).backprop_fraction(CONTEXT) == 0.3
    assert FullOptions().backprop_fraction(CONTEXT) == 1.0
    assert RS2Options(ratio=1).ratio == 1.0 and isinstance(RS2Options(ratio=1).ratio, float)


def test_options_check_against_the_run():
    RS2Options(ratio=0.3).check(CONTEXT)
    FullOptions(budget=0.25).check(CONTEXT)
    tiny = RunContext(n=10, batch_size=4, epochs=2, num_classes=3)
    with pytest.raises(ValueError, match="0.01 makes the subset empty for 10"):
        RS2Options(ratio=0.01).check(tiny)
    with pytest.raises(ValueError, match="0.04 makes the subset empty for 10"):
        FullOptions(budget=0.04).check(tiny)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        RS2Options().check(RunContext(n=10, batch_size=0, epochs=2, num_classes=3))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: RS2Options(ratio=0), "ratio must be a number in \\(0, 1\\], got 0"),
        (lambda: RS2Options(ratio=1.5), "got 1.5"),
        (lambda: RS2Options(ratio=float("nan")), "got nan"),
        (lambda: RS2Options(ratio="0.3"), "ratio must be a number, got '0.3'"),
        (lambda: FullOptions(budget=0), "budget must be a number in \\(0, 1\\], got 0"),
        (lambda: FullOptions(budget=1.01), "got 1.01"),
        (lambda: FullOptions(budget=-1), "got -1"),
        (lambda: FullOptions(budget=float("nan")), "got nan"),
        (lambda: RS2Sampler(0, 0.3), "n must be a positive integer, got 0"),
        (lambda: RS2Sampler(10, 0), "got 0"),
        (lambda: RS2Sampler(10, 1.5), "got 1.5"),
        (lambda: RS2Sampler(10, float("nan")), "got nan"),
        (lambda: RS2Sampler(10, 0.01), "0.01 makes the subset empty"),
        (lambda: RS2Sampler(10.0, 0.3), "got 10.0"),
        (lambda: RS2Sampler(10, 0.3, seed=1.5), "seed must be an integer, got 1.5"),
        (lambda: RS2Sampler(10, 0.3, num_replicas=0), "num_replicas must be >= 1, got 0"),
        (lambda: RS2Sampler(10, 0.3, num_replicas=2, rank=2), "rank must be in \\[0, 2\\), got 2"),
        (lambda: RS2Sampler(10, 0.3, rank=-1), "got -1"),
        (lambda: RS2Sampler(10, 0.3).set_epoch(-1), "epoch must be >= 0, got -1"),
        (lambda: rs2_indices(0, 0.3, seed=0, epoch=0), "got 0"),
        (lambda: rs2_indices(10, 0.3, seed=0, epoch=-2), "epoch must be >= 0, got -2"),
        (lambda: rs2_indices(10, 0.3, seed=0, epoch=True), "got True"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_position_past_the_end_is_refused():
    sampler = RS2Sampler(100, 0.3)
    with pytest.raises(ValueError, match="position 31 is past the epoch's end"):
        sampler.load_state_dict({**sampler.state_dict(), "position": 31})
