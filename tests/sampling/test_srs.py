"""Soft Random Sampling: properties of the index schedule and of the sampler wrapper."""

from __future__ import annotations

import copy
import io
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from sievetrain.sampling import (
    SoftRandomSampler,
    batch_partition,
    selection_round,
    soft_random_indices,
    subset_size,
)

PROPERTY = settings(max_examples=40, deadline=None)

seeds = st.integers(0, 2**32)
epochs = st.integers(0, 50)
ratios = st.floats(0.01, 1.0)


def _sizes_where_collisions_are_negligible(draw, *, max_n: int = 400) -> tuple[int, float]:
    """(n, ratio) with 20 <= m <= n - 20: two subsets coincide w.p. <= 1/C(40, 20) < 1e-11."""
    n = draw(st.integers(40, max_n))
    m = draw(st.integers(20, n - 20))
    return n, m / n


big_enough = st.composite(_sizes_where_collisions_are_negligible)


# --- sizes ---------------------------------------------------------------------------------


@PROPERTY
@given(n=st.integers(1, 10**6), ratio=st.floats(0.0, 1.0, exclude_min=True))
def test_subset_size_is_ratio_times_n_rounded_half_up(n, ratio):
    product = Fraction(repr(ratio)) * n  # the decimal the ratio prints as, times n, exactly
    if product < Fraction(1, 2):
        with pytest.raises(ValueError, match="empty"):
            subset_size(n, ratio)
        return
    m = subset_size(n, ratio)
    assert 1 <= m <= n
    assert -Fraction(1, 2) < m - product <= Fraction(1, 2)  # nearest integer, halves go up


@PROPERTY
@given(n=st.integers(1, 10**6), numerator=st.integers(1, 1024))
def test_subset_size_rounds_half_up_exactly(n, numerator):
    # ratio = numerator / 1024 is exact in binary, so ratio * n is exact: check against integers.
    ratio = numerator / 1024
    exact_m = (2 * numerator * n + 1024) // 2048  # floor(numerator * n / 1024 + 1/2)
    if exact_m == 0:
        pytest.raises(ValueError, subset_size, n, ratio)
    else:
        assert subset_size(n, ratio) == exact_m


def test_subset_size_examples():
    assert subset_size(10, 0.25) == 3  # 2.5 rounds up (Python's round() would give 2)
    assert subset_size(2, 0.25) == 1  # 0.5 rounds up
    assert subset_size(6, 0.25) == 2  # 1.5 rounds up
    assert subset_size(100_000, 0.05) == 5_000
    assert subset_size(7, 1.0) == 7
    assert subset_size(15, 0.3) == 5  # 0.3 means 3/10: 4.5 rounds up (the double is below 0.3)
    assert subset_size(5, 0.1) == 1  # 0.5 rounds up
    with pytest.raises(ValueError, match="empty"):  # float floor(x + 0.5) would say 1 here
        subset_size(1, 0.49999999999999994)


@PROPERTY
@given(
    n=st.integers(1, 2000),
    ratio=ratios,
    seed=seeds,
    epoch=epochs,
    interval=st.integers(0, 5),
    warm=st.integers(0, 3),
)
def test_indices_are_unique_in_range_and_sized(n, ratio, seed, epoch, interval, warm):
    assume(ratio * n >= 0.5)
    out = soft_random_indices(
        n, ratio, seed=seed, epoch=epoch, interval=interval, warm_start_epochs=warm
    )
    assert out.dtype == torch.int64 and out.dim() == 1
    assert out.numel() == (n if epoch < warm else subset_size(n, ratio))
    assert out.unique().numel() == out.numel()
    assert int(out.min()) >= 0 and int(out.max()) < n


@PROPERTY
@given(n=st.integers(1, 500), ratio=ratios, seed=seeds, epoch=epochs)
def test_with_replacement_has_m_indices_in_range(n, ratio, seed, epoch):
    assume(ratio * n >= 0.5)
    out = soft_random_indices(n, ratio, seed=seed, epoch=epoch, within_epoch_replacement=True)
    assert out.numel() == subset_size(n, ratio)
    assert int(out.min()) >= 0 and int(out.max()) < n


def test_with_replacement_repeats_indices():
    # 1000 i.i.d. draws from 1000 samples: about 368 repeats expected, none is (1e-430) unlikely.
    out = soft_random_indices(1000, 1.0, seed=0, epoch=0, within_epoch_replacement=True)
    assert out.unique().numel() < 700


# --- determinism and epochs ----------------------------------------------------------------


@PROPERTY
@given(
    n=st.integers(1, 500),
    ratio=ratios,
    seed=seeds,
    epoch=epochs,
    replacement=st.booleans(),
    interval=st.integers(0, 4),
)
def test_same_seed_and_epoch_give_same_indices(n, ratio, seed, epoch, replacement, interval):
    assume(ratio * n >= 0.5)
    kwargs = dict(seed=seed, epoch=epoch, within_epoch_replacement=replacement, interval=interval)
    first = soft_random_indices(n, ratio, **kwargs)
    assert torch.equal(first, soft_random_indices(n, ratio, **kwargs))
    sampler = SoftRandomSampler(
        n, ratio, seed=seed, within_epoch_replacement=replacement, interval=interval
    )
    sampler.set_epoch(epoch)
    assert list(sampler) == first.tolist()  # the sampler is the function, epoch by epoch
    assert len(sampler) == first.numel()
    assert torch.equal(sampler.epoch_indices(), first)


@PROPERTY
@given(sizes=big_enough(), seed=seeds, epoch=epochs, replacement=st.booleans())
def test_consecutive_epochs_draw_different_subsets(sizes, seed, epoch, replacement):
    n, ratio = sizes
    kwargs = dict(seed=seed, within_epoch_replacement=replacement)
    this = soft_random_indices(n, ratio, epoch=epoch, **kwargs)
    after = soft_random_indices(n, ratio, epoch=epoch + 1, **kwargs)
    assert set(this.tolist()) != set(after.tolist())


@PROPERTY
@given(sizes=big_enough(), seed=seeds, interval=st.integers(1, 5), warm=st.integers(0, 3))
def test_interval_keeps_the_set_for_r_epochs_and_reshuffles_the_order(sizes, seed, interval, warm):
    n, ratio = sizes
    runs = [
        soft_random_indices(n, ratio, seed=seed, epoch=e, interval=interval, warm_start_epochs=warm)
        for e in range(warm, warm + 3 * interval)
    ]
    for e, run in enumerate(runs):
        same_round = e // interval == (e + 1) // interval
        if e + 1 < len(runs):
            assert (set(run.tolist()) == set(runs[e + 1].tolist())) == same_round
            assert not torch.equal(run, runs[e + 1])  # the order changes every epoch


@PROPERTY
@given(sizes=big_enough(), seed=seeds, warm=st.integers(0, 3), replacement=st.booleans())
def test_interval_zero_keeps_one_subset_for_the_whole_run(sizes, seed, warm, replacement):
    n, ratio = sizes
    kwargs = dict(
        seed=seed, interval=0, warm_start_epochs=warm, within_epoch_replacement=replacement
    )
    runs = [soft_random_indices(n, ratio, epoch=e, **kwargs) for e in (warm, warm + 1, warm + 97)]
    assert all(sorted(run.tolist()) == sorted(runs[0].tolist()) for run in runs)
    assert not torch.equal(runs[0], runs[1])


def test_selection_round():
    assert [selection_round(e, interval=3, warm_start_epochs=2) for e in range(9)] == [
        None, None, 0, 0, 0, 1, 1, 1, 2,
    ]  # fmt: skip
    assert {selection_round(e, interval=0) for e in range(100)} == {0}


@PROPERTY
@given(n=st.integers(20, 400), ratio=st.floats(0.05, 1.0), seed=seeds, warm=st.integers(1, 4))
def test_warm_start_epochs_are_full_permutations(n, ratio, seed, warm):
    runs = [
        soft_random_indices(n, ratio, seed=seed, epoch=e, warm_start_epochs=warm)
        for e in range(warm + 1)
    ]
    for run in runs[:warm]:
        assert sorted(run.tolist()) == list(range(n))
    assert all(not torch.equal(a, b) for a, b in zip(runs[:warm], runs[1:warm], strict=False))
    assert runs[warm].numel() == subset_size(n, ratio)


@PROPERTY
@given(n=st.integers(1, 500), seed=seeds, epoch=epochs, interval=st.integers(0, 3))
def test_ratio_one_is_a_permutation(n, seed, epoch, interval):
    out = soft_random_indices(n, 1.0, seed=seed, epoch=epoch, interval=interval)
    assert sorted(out.tolist()) == list(range(n))


# --- ranks ---------------------------------------------------------------------------------


@PROPERTY
@given(
    n=st.integers(1, 500),
    ratio=ratios,
    seed=seeds,
    epoch=st.integers(0, 6),
    replicas=st.integers(1, 5),
    warm=st.integers(0, 3),
)
def test_ranks_are_disjoint_equal_and_cover_the_global_subset(
    n, ratio, seed, epoch, replicas, warm
):
    assume(ratio * n >= 0.5 and subset_size(n, ratio) >= replicas)
    kwargs = dict(seed=seed, epoch=epoch, warm_start_epochs=warm)
    shards = [
        soft_random_indices(n, ratio, num_replicas=replicas, rank=r, **kwargs).tolist()
        for r in range(replicas)
    ]
    union = set().union(*shards)
    assert len({len(shard) for shard in shards}) == 1  # lockstep
    assert sum(len(shard) for shard in shards) == len(union)  # disjoint
    full = n if epoch < warm else subset_size(n, ratio)
    assert len(union) == full // replicas * replicas  # rounded DOWN to a multiple of replicas
    single = soft_random_indices(n, ratio, **kwargs)
    if epoch >= warm:  # the global subset is a prefix of one rank's draw: never new samples
        assert union <= set(single.tolist())
    if full % replicas == 0:  # nothing dropped: interleaving the shards gives the global order
        interleaved = [shard[i] for i in range(len(shards[0])) for shard in shards]
        assert interleaved == single.tolist()


def test_ranks_keep_one_global_subset_for_the_whole_round():
    # m = 103 rounds down to 100 for 4 ranks when the subset is DRAWN, not when each epoch is
    # cut, so all epochs of a round train on the same 100 samples.
    kwargs = dict(seed=7, interval=3, num_replicas=4)

    def union_of_ranks(epoch: int) -> set[int]:
        shards = [soft_random_indices(500, 0.206, epoch=epoch, rank=r, **kwargs) for r in range(4)]
        return set(torch.cat(shards).tolist())

    unions = [union_of_ranks(e) for e in range(3)]
    assert len(unions[0]) == 100 and unions[0] == unions[1] == unions[2]
    assert SoftRandomSampler(500, 0.206, **kwargs).subset_size == 100


def test_too_many_replicas_for_the_subset_is_an_error():
    with pytest.raises(ValueError, match="2 samples < 3 ranks"):
        soft_random_indices(10, 0.2, seed=0, epoch=0, num_replicas=3, rank=0)


# --- batch granularity ---------------------------------------------------------------------


def _split_into_batches(indices: list[int], batches: list[list[int]]) -> list[int]:
    """Ids of the partition's batches that ``indices`` concatenates; fails if it does not."""
    batch_of = {i: b for b, batch in enumerate(batches) for i in batch}
    ids, position = [], 0
    while position < len(indices):
        b = batch_of[indices[position]]
        assert indices[position : position + len(batches[b])] == batches[b], "batch split apart"
        ids.append(b)
        position += len(batches[b])
    return ids


@PROPERTY
@given(
    n=st.integers(1, 300),
    batch_size=st.integers(1, 40),
    ratio=ratios,
    seed=seeds,
    replacement=st.booleans(),
    warm=st.integers(0, 2),
)
def test_batch_granularity_yields_whole_batches_of_the_runs_partition(
    n, batch_size, ratio, seed, replacement, warm
):
    num_batches = math.ceil(n / batch_size)
    assume(ratio * num_batches >= 0.5)
    batches = [b.tolist() for b in batch_partition(n, batch_size, seed=seed)]
    assert len(batches) == num_batches
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(len(b) == batch_size for b in batches[:-1])
    sampler = SoftRandomSampler(
        n,
        ratio,
        seed=seed,
        granularity="batch",
        batch_size=batch_size,
        within_epoch_replacement=replacement,
        warm_start_epochs=warm,
    )
    assert sampler.subset_size == subset_size(num_batches, ratio)
    for epoch in range(warm + 3):
        sampler.set_epoch(epoch)
        ids = _split_into_batches(list(sampler), batches)
        if epoch < warm:
            assert sorted(ids) == list(range(num_batches))
        else:
            assert len(ids) == subset_size(num_batches, ratio)
            if not replacement:
                assert len(set(ids)) == len(ids)


def test_batch_granularity_shuffles_batch_order_every_epoch_and_keeps_it_with_interval():
    kwargs = dict(seed=3, granularity="batch", batch_size=10, interval=5)
    batches = [b.tolist() for b in batch_partition(1000, 10, seed=3)]
    ids = [
        _split_into_batches(soft_random_indices(1000, 0.3, epoch=e, **kwargs).tolist(), batches)
        for e in range(6)
    ]
    assert all(sorted(ids[e]) == sorted(ids[0]) for e in range(5))
    assert all(ids[e] != ids[e + 1] for e in range(5))
    assert sorted(ids[5]) != sorted(ids[0])


@PROPERTY
@given(
    n=st.integers(20, 300), batch_size=st.integers(1, 20), seed=seeds, replicas=st.integers(2, 4)
)
def test_batch_granularity_ranks_are_disjoint_and_equal(n, batch_size, seed, replicas):
    kwargs = dict(seed=seed, epoch=1, granularity="batch", batch_size=batch_size)
    num_batches = math.ceil(n / batch_size)
    k, last = subset_size(num_batches, 0.5), n - (num_batches - 1) * batch_size
    if (k - 1) * batch_size + last < replicas:  # an epoch could be shorter than the ranks
        with pytest.raises(ValueError, match=f"< {replicas} ranks"):
            soft_random_indices(n, 0.5, num_replicas=replicas, rank=0, **kwargs)
        return
    shards = [
        soft_random_indices(n, 0.5, num_replicas=replicas, rank=r, **kwargs).tolist()
        for r in range(replicas)
    ]
    glob = soft_random_indices(n, 0.5, **kwargs).tolist()
    assert len({len(shard) for shard in shards}) == 1
    assert sorted(i for shard in shards for i in shard) == sorted(glob[: len(shards[0]) * replicas])


def test_sample_granularity_ignores_batch_size():
    a = soft_random_indices(100, 0.3, seed=1, epoch=2)
    assert torch.equal(a, soft_random_indices(100, 0.3, seed=1, epoch=2, batch_size=7))


# --- the sampler: state, resume, DataLoader -------------------------------------------------


@PROPERTY
@given(
    n=st.integers(1, 300),
    ratio=ratios,
    seed=seeds,
    epoch=st.integers(0, 10),
    cut=st.floats(0, 1),
    set_epoch_again=st.booleans(),
    replacement=st.booleans(),
)
def test_mid_epoch_state_round_trip(n, ratio, seed, epoch, cut, set_epoch_again, replacement):
    assume(ratio * n >= 0.5)
    config = dict(seed=seed, interval=2, warm_start_epochs=1, within_epoch_replacement=replacement)
    original = SoftRandomSampler(n, ratio, **config)
    original.set_epoch(epoch)
    full = original.epoch_indices().tolist()
    k = int(cut * len(full))
    iterator = iter(original)
    consumed = [next(iterator) for _ in range(k)]
    assert consumed == full[:k] and original.position == k
    state = torch.load(io.BytesIO(_saved(original.state_dict())), weights_only=True)

    resumed = SoftRandomSampler(n, ratio, **config)
    resumed.load_state_dict(state)
    assert resumed.position == k and len(resumed) == len(full)
    if set_epoch_again:  # the usual top-of-loop call must not lose the resume point
        resumed.set_epoch(epoch)
    assert list(resumed) == full[k:]
    assert resumed.position == len(full)
    assert list(resumed) == full  # resuming happens once; iterating again restarts the epoch
    resumed.set_epoch(epoch + 1)
    assert resumed.position == 0
    assert list(resumed) == soft_random_indices(n, ratio, epoch=epoch + 1, **config).tolist()


def _saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_set_epoch_to_another_epoch_drops_a_pending_resume():
    sampler = SoftRandomSampler(100, 0.5, seed=1)
    sampler.load_state_dict({**sampler.state_dict(), "epoch": 3, "position": 10})
    sampler.set_epoch(4)
    assert sampler.position == 0
    assert list(sampler) == soft_random_indices(100, 0.5, seed=1, epoch=4).tolist()


def test_state_dict_is_a_copyable_snapshot():
    sampler = SoftRandomSampler(50, 0.5, seed=2, interval=3)
    sampler.set_epoch(5)
    iterator = iter(sampler)
    next(iterator), next(iterator)
    state = copy.deepcopy(sampler.state_dict())
    assert state["epoch"] == 5 and state["position"] == 2
    assert state["config"]["interval"] == 3 and state["config"]["seed"] == 2
    next(iterator)
    assert state["position"] == 2 and sampler.position == 3


def test_sampler_attributes():
    sampler = SoftRandomSampler(1000, 0.3, seed=4, interval=5, num_replicas=4, rank=1)
    assert (sampler.n, sampler.ratio, sampler.interval, sampler.seed) == (1000, 0.3, 5, 4)
    assert (sampler.num_replicas, sampler.rank, sampler.granularity) == (4, 1, "sample")
    assert sampler.subset_size == 300 and len(sampler) == 75
    with pytest.raises(AttributeError):
        sampler.no_such_attribute  # noqa: B018


def test_sampler_feeds_a_dataloader():
    dataset = TensorDataset(torch.arange(1000))
    sampler = SoftRandomSampler(len(dataset), 0.25, seed=5)
    loader = DataLoader(dataset, batch_size=64, sampler=sampler)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = torch.cat([batch for (batch,) in loader])
        assert torch.equal(seen, soft_random_indices(1000, 0.25, seed=5, epoch=epoch))
    assert len(loader) == math.ceil(250 / 64)


# --- bad arguments --------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (dict(ratio=float("nan")), "nan"),
    (dict(ratio=0.0), "got 0.0"),
    (dict(ratio=-0.1), "-0.1"),
    (dict(ratio=1.5), "1.5"),
    (dict(ratio="0.5"), "'0.5'"),
    (dict(ratio=0.04), "ratio 0.04 makes the subset empty for 10 samples"),
    (dict(n=0), "empty dataset.*got 0"),
    (dict(n=-5), "-5"),
    (dict(rank=2, num_replicas=2), r"rank must be in \[0, 2\), got 2"),
    (dict(rank=-1), "-1"),
    (dict(num_replicas=0), "num_replicas must be >= 1, got 0"),
    (dict(granularity="chunk"), "'chunk'"),
    (dict(granularity="batch"), "batch_size.*got None"),
    (dict(granularity="batch", batch_size=0), "batch_size.*got 0"),
    (dict(interval=-1), "interval must be >= 0, got -1"),
    (dict(interval=1.5), "interval must be an integer, got 1.5"),
    (dict(warm_start_epochs=-2), "warm_start_epochs must be >= 0, got -2"),
    (dict(within_epoch_replacement="yes"), "'yes'"),
    (dict(seed=0.5), "seed must be an integer, got 0.5"),
    (dict(num_replicas=4, ratio=0.3), "ratio 0.3: 3 samples < 4 ranks"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error_naming_the_value(overrides, message):
    kwargs = dict(n=10, ratio=0.5, seed=0) | overrides
    with pytest.raises(ValueError, match=message):
        soft_random_indices(**kwargs, epoch=0)
    with pytest.raises(ValueError, match=message):
        SoftRandomSampler(**kwargs)


def test_bad_epoch_and_bad_state_raise_value_error():
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        soft_random_indices(10, 0.5, seed=0, epoch=-1)
    sampler = SoftRandomSampler(10, 0.5)
    with pytest.raises(ValueError, match="epoch must be >= 0, got -3"):
        sampler.set_epoch(-3)
    other = SoftRandomSampler(10, 0.6).state_dict()
    with pytest.raises(ValueError, match="ratio=0.6, this sampler has 0.5"):
        sampler.load_state_dict(other)
    with pytest.raises(ValueError, match="position 6 is past"):
        sampler.load_state_dict({**sampler.state_dict(), "position": 6})
