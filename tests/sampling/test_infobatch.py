"""InfoBatch: the epoch plan (who is pruned, the weights, annealing) and the sampler
(scores from training losses, owned randomness, mid-epoch resume)."""

from __future__ import annotations

import io
import itertools
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sievetrain.options import RunContext
from sievetrain.rng import make_generator
from sievetrain.sampling.infobatch import (
    InfoBatchOptions,
    InfoBatchSampler,
    annealing_start,
    infobatch_plan,
)
from sievetrain.sampling.srs import soft_random_indices

PROPERTY = settings(max_examples=40, deadline=None)
seeds = st.integers(0, 2**32)


def _scores(n: int, seed: int, *, levels: int | None = None) -> torch.Tensor:
    """Random scores; with ``levels``, integers in [0, levels): ties, and an exact mean."""
    generator = make_generator(seed, "test-scores")
    if levels is not None:
        return torch.randint(levels, (n,), generator=generator).float()
    return torch.rand(n, generator=generator) * 3


def _fake_losses(n: int, epoch: int, idx: torch.Tensor) -> torch.Tensor:
    """Training losses of ``idx`` in ``epoch``: a fixed function of (sample, epoch)."""
    return (torch.rand(n, generator=make_generator(7, "fake-losses", epoch)) ** 2)[idx]


def _train_epoch(sampler, n, epoch, *, batch_size=16, stop_after=None):
    """One epoch as the trainer runs it: set_epoch, len, then per batch the weights and
    the losses fed back. Returns [(idx, weights)] per batch; stops after ``stop_after``."""
    sampler.set_epoch(epoch)
    len(sampler)
    batches, iterator = [], iter(sampler)
    while idx := list(itertools.islice(iterator, batch_size)):
        idx = torch.tensor(idx)
        batches.append((idx, sampler.sample_weights(idx)))
        sampler.observe_losses(idx, _fake_losses(n, epoch, idx))
        if len(batches) == stop_after:
            break
    return batches


def _same_batches(a, b) -> bool:
    if len(a) != len(b):
        return False
    for (idx_a, w_a), (idx_b, w_b) in zip(a, b, strict=True):
        if not torch.equal(idx_a, idx_b) or (w_a is None) != (w_b is None):
            return False
        if w_a is not None and not torch.equal(w_a, w_b):
            return False
    return True


def _through_disk(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --- the plan ------------------------------------------------------------------------------


@PROPERTY
@given(
    n=st.integers(1, 300),
    value=st.floats(0, 1e6),
    seed=seeds,
    epoch=st.integers(0, 5),
    prune=st.floats(0.01, 0.99),
)
def test_equal_scores_prune_nothing_and_yield_the_full_baselines_epoch(
    n, value, seed, epoch, prune
):
    scores = torch.full((n,), value, dtype=torch.float32)
    indices, weights = infobatch_plan(scores, prune=prune, epoch=epoch, epochs=10, seed=seed)
    assert torch.equal(indices, soft_random_indices(n, 1.0, seed=seed, epoch=epoch))
    assert weights is None
    sampler = InfoBatchSampler(n, prune, epochs=10, seed=seed)  # scores start equal (1.0)
    sampler.set_epoch(epoch)
    assert list(sampler) == indices.tolist()
    assert sampler.sample_weights(torch.arange(n)) is None


@PROPERTY
@given(
    n=st.integers(1, 400),
    seed=seeds,
    epoch=st.integers(0, 6),
    prune=st.floats(0.01, 0.99),
    levels=st.sampled_from([None, 2, 5]),
)
def test_only_below_mean_samples_are_pruned_and_the_kept_ones_weigh_one_over_one_minus_p(
    n, seed, epoch, prune, levels
):
    scores = _scores(n, seed, levels=levels)
    indices, weights = infobatch_plan(scores, prune=prune, epoch=epoch, epochs=7, seed=seed)
    below = scores.double() < scores.double().mean()
    kept = torch.zeros(n, dtype=torch.bool)
    kept[indices] = True
    assert indices.dtype == torch.int64 and len(set(indices.tolist())) == indices.numel()
    assert bool(kept[~below].all())  # never an above-mean (or mean) sample
    order = soft_random_indices(n, 1.0, seed=seed, epoch=epoch)
    assert indices.tolist() == [i for i in order.tolist() if kept[i]]  # full order, minus pruned
    rescaled = below & kept
    if not bool(rescaled.any()):
        assert weights is None
        return
    assert weights.dtype == torch.float32 and weights.shape == (n,)
    assert bool((weights[rescaled] == torch.tensor(1 / (1 - prune))).all())
    assert bool((weights[~rescaled] == 1).all())


@pytest.mark.parametrize("prune", [0.1, 0.3, 0.5, 0.9])
def test_pruned_fraction_of_below_mean_samples_is_p_within_binomial_bounds(prune):
    n = 20_000
    scores = _scores(n, 0)
    below = int((scores.double() < scores.double().mean()).sum())
    assert 9_000 < below < 11_000
    pruned_sets = []
    for epoch in range(3):
        indices, _ = infobatch_plan(scores, prune=prune, epoch=epoch, epochs=10, seed=5)
        pruned = n - indices.numel()
        sigma = math.sqrt(below * prune * (1 - prune))
        assert abs(pruned - below * prune) <= 5 * sigma, (epoch, pruned, below * prune, sigma)
        pruned_sets.append(set(range(n)) - set(indices.tolist()))
    assert pruned_sets[0] != pruned_sets[1] and pruned_sets[1] != pruned_sets[2]  # fresh draws


def test_rescaling_is_unbiased_the_weighted_loss_sum_matches_full_data():
    n, prune, trials = 1000, 0.6, 300
    losses = _scores(n, 3).double()
    below = losses < losses.mean()
    total = 0.0
    for epoch in range(trials):
        indices, weights = infobatch_plan(losses, prune=prune, epoch=epoch, epochs=10**6, seed=9)
        total += float((weights.double()[indices] * losses[indices]).sum())
    # Var of one epoch's sum: each below-mean l_i contributes l_i / (1 - P) w.p. 1 - P.
    sigma = math.sqrt(float((losses[below] ** 2).sum()) * prune / (1 - prune) / trials)
    assert abs(total / trials - float(losses.sum())) <= 5 * sigma


@pytest.mark.parametrize(
    ("epochs", "delta", "start"),
    [(8, 0.875, 7), (10, 0.875, 9), (200, 0.875, 175), (10, 0.3, 3), (3, 1.0, 3), (1, 0.5, 1)],
)
def test_annealing_starts_at_the_first_epoch_at_or_after_delta_times_epochs(epochs, delta, start):
    assert annealing_start(epochs, delta) == start
    n, seed = 200, 4
    scores = _scores(n, seed)
    for epoch in range(epochs + 1):
        indices, weights = infobatch_plan(
            scores, prune=0.5, delta=delta, epoch=epoch, epochs=epochs, seed=seed
        )
        full = soft_random_indices(n, 1.0, seed=seed, epoch=epoch)
        if epoch >= start:  # full data, unit weights
            assert torch.equal(indices, full) and weights is None
        else:  # ~100 below-mean samples: all kept with probability 2^-100
            assert indices.numel() < n and weights is not None


@PROPERTY
@given(seed=seeds, epoch=st.integers(0, 6), prune=st.floats(0.05, 0.95))
def test_the_plan_is_a_pure_function_of_seed_epoch_and_scores(seed, epoch, prune):
    scores = _scores(300, seed)
    kwargs = dict(prune=prune, epoch=epoch, epochs=10)
    first, weights = infobatch_plan(scores, seed=seed, **kwargs)
    again, weights_again = infobatch_plan(scores.clone(), seed=seed, **kwargs)
    assert torch.equal(first, again) and torch.equal(weights, weights_again)
    other, _ = infobatch_plan(scores, seed=seed + 1, **kwargs)
    assert not torch.equal(first, other)
    later, _ = infobatch_plan(scores, seed=seed, **{**kwargs, "epoch": epoch + 1})
    assert not torch.equal(first, later)


def test_the_global_torch_rng_is_untouched():
    before = torch.get_rng_state()
    sampler = InfoBatchSampler(500, 0.5, epochs=4, seed=1)
    for epoch in range(4):
        _train_epoch(sampler, 500, epoch)
    infobatch_plan(_scores(100, 0), epoch=0, epochs=2, seed=0)
    assert torch.equal(torch.get_rng_state(), before)


# --- the sampler ---------------------------------------------------------------------------


def test_each_epoch_is_planned_from_the_scores_at_its_start():
    n = 300
    sampler = InfoBatchSampler(n, 0.5, epochs=6, seed=2)
    _train_epoch(sampler, n, 0)
    start_scores = sampler.scores
    assert torch.equal(start_scores, _fake_losses(n, 0, torch.arange(n)))  # every sample seen
    sampler.set_epoch(1)
    expected, expected_weights = infobatch_plan(start_scores, prune=0.5, epoch=1, epochs=6, seed=2)
    assert torch.equal(sampler.epoch_indices(), expected) and expected_weights is not None
    sampler.observe_losses(torch.arange(n), torch.linspace(5, 0, n))  # scores change mid-epoch
    assert torch.equal(sampler.epoch_indices(), expected)  # ... the epoch's plan does not
    assert torch.equal(sampler.sample_weights(torch.arange(n)), expected_weights)
    assert list(sampler) == expected.tolist()


def test_observe_losses_stores_detached_float32_cpu_scores():
    sampler = InfoBatchSampler(10, epochs=3)
    losses = torch.tensor([0.25, 2.0, 3.5], dtype=torch.float64, requires_grad=True)
    sampler.observe_losses(torch.tensor([7, 0, 3]), losses * 1)
    scores = sampler.scores
    assert scores.dtype == torch.float32 and not scores.requires_grad
    assert scores[[7, 0, 3]].tolist() == [0.25, 2.0, 3.5]
    assert scores[[1, 2, 4, 5, 6, 8, 9]].tolist() == [1.0] * 7  # untouched: the initial score
    with pytest.raises(ValueError, match="3 indices but 2 losses"):
        sampler.observe_losses(torch.tensor([1, 2, 3]), torch.ones(2))


def test_stats_count_the_pruned_samples_of_every_epoch():
    n, epochs = 400, 5
    sampler = InfoBatchSampler(n, 0.5, epochs=epochs, delta=0.8, seed=3)
    sizes = [sum(len(idx) for idx, _ in _train_epoch(sampler, n, e)) for e in range(epochs)]
    stats = json.loads(json.dumps(sampler.stats()))
    assert stats["pruned_per_epoch"] == [n - size for size in sizes]
    assert stats["pruned"] == sum(n - size for size in sizes)
    assert stats["pruned_per_epoch"][0] == 0 and stats["pruned_per_epoch"][4] == 0  # annealing
    assert min(stats["pruned_per_epoch"][1:4]) > 0


@settings(max_examples=12, deadline=None)
@given(seed=seeds, interrupt=st.integers(0, 5), cut=st.floats(0, 1))
def test_mid_epoch_state_round_trip_resumes_bitwise(seed, interrupt, cut):
    n, epochs, batch_size = 300, 7, 16
    config = dict(epochs=epochs, delta=0.75, seed=seed)  # prunes epochs 0-5, anneals 6
    straight_sampler = InfoBatchSampler(n, 0.4, **config)
    straight = [_train_epoch(straight_sampler, n, e) for e in range(epochs)]
    assert all(any(w is not None for _, w in straight[e]) for e in range(1, 6))  # weighted
    assert all(w is None for _, w in straight[0] + straight[6])  # equal scores; annealing

    first = InfoBatchSampler(n, 0.4, **config)
    for e in range(interrupt):
        _train_epoch(first, n, e)
    k = int(cut * len(straight[interrupt]))
    head = _train_epoch(first, n, interrupt, stop_after=k) if k else []
    if k:
        assert first.position == min(k * batch_size, len(first))
    state = _through_disk(first.state_dict())
    del first

    resumed = InfoBatchSampler(n, 0.4, **config)
    resumed.load_state_dict(state)
    tail = _train_epoch(resumed, n, interrupt)  # set_epoch(interrupt) keeps the resume point
    assert _same_batches(head + tail, straight[interrupt])
    for e in range(interrupt + 1, epochs):
        assert _same_batches(_train_epoch(resumed, n, e), straight[e])
    assert torch.equal(resumed.scores, straight_sampler.scores)
    assert resumed.stats() == straight_sampler.stats()


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (dict(prune=0.3), "prune=0.3, this sampler has 0.5"),
        (dict(delta=0.5), "delta=0.5, this sampler has 0.875"),
        (dict(epochs=11), "epochs=11, this sampler has 10"),
        (dict(n=99), "n=99, this sampler has 100"),
        (dict(seed=1), "seed=1, this sampler has 0"),
        (dict(num_replicas=2), "num_replicas=2, this sampler has 1"),
    ],
)
def test_loading_the_state_of_a_differently_configured_sampler_raises(other, message):
    kwargs = dict(n=100, prune=0.5, epochs=10, delta=0.875, seed=0)
    sampler = InfoBatchSampler(**kwargs)
    with pytest.raises(ValueError, match=message):
        sampler.load_state_dict(InfoBatchSampler(**{**kwargs, **other}).state_dict())


def test_a_state_saved_before_ranks_existed_still_loads():
    sampler = InfoBatchSampler(60, 0.5, epochs=4, seed=2)
    _train_epoch(sampler, 60, 0)
    sampler.set_epoch(1)
    iterator = iter(sampler)
    [next(iterator) for _ in range(5)]
    state = sampler.state_dict()
    for key in ("num_replicas", "rank"):  # the config had neither
        del state["config"][key]
    resumed = InfoBatchSampler(60, 0.5, epochs=4, seed=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert list(resumed) == list(iterator)


def test_ranks_share_one_global_plan_cut_to_a_multiple_of_the_ranks():
    # Without a process group nothing is merged: here every rank is fed every loss.
    n, ranks = 61, 3
    samplers = [InfoBatchSampler(n, epochs=4, seed=5, num_replicas=ranks, rank=r) for r in range(3)]
    whole = InfoBatchSampler(n, epochs=4, seed=5)
    for s in [*samplers, whole]:
        s.observe_losses(torch.arange(n), _fake_losses(n, 0, torch.arange(n)))
        s.set_epoch(1)
    order = whole.epoch_indices()
    usable = order.numel() // ranks * ranks
    assert usable < order.numel()  # this seed has a tail to drop
    for r, s in enumerate(samplers):
        assert torch.equal(s.epoch_indices(), order[r:usable:ranks])
        assert torch.equal(s.sample_weights(torch.arange(n)), whole.sample_weights(torch.arange(n)))
        assert s.stats() == whole.stats()
    with pytest.raises(ValueError, match="2 samples < 3 ranks"):
        InfoBatchSampler(2, epochs=4, num_replicas=3)


# --- options and bad arguments -------------------------------------------------------------

BAD_ARGUMENTS = [
    (dict(prune=0.0), r"prune must be a number in \(0, 1\), got 0.0"),
    (dict(prune=1.0), "prune.*got 1.0"),
    (dict(prune=-0.1), "prune.*got -0.1"),
    (dict(prune=float("nan")), "prune.*got nan"),
    (dict(prune="0.5"), "prune must be a number, got '0.5'"),
    (dict(delta=0.0), r"delta must be a number in \(0, 1\], got 0.0"),
    (dict(delta=1.5), "delta.*got 1.5"),
    (dict(epochs=0), "epochs must be >= 1, got 0"),
    (dict(epochs=2.5), "epochs must be an integer, got 2.5"),
    (dict(seed=0.5), "seed must be an integer, got 0.5"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error_naming_the_value(overrides, message):
    kwargs = dict(prune=0.5, epochs=10, delta=0.875, seed=0) | overrides
    with pytest.raises(ValueError, match=message):
        InfoBatchSampler(20, **kwargs)
    with pytest.raises(ValueError, match=message):
        infobatch_plan(torch.ones(20), epoch=0, **kwargs)


def test_bad_dataset_size_scores_and_epoch_raise_value_error():
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        InfoBatchSampler(0, epochs=3)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        infobatch_plan(torch.ones(0), epoch=0, epochs=3, seed=0)
    with pytest.raises(ValueError, match=r"one-dimensional.*\(2, 3\)"):
        infobatch_plan(torch.ones(2, 3), epoch=0, epochs=3, seed=0)
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        infobatch_plan(torch.ones(4), epoch=-1, epochs=3, seed=0)


def test_options_validate_check_against_the_run_and_leave_the_budget_to_a_run():
    assert InfoBatchOptions.names() == ("prune", "delta")
    assert (InfoBatchOptions.prune, InfoBatchOptions.delta) == (0.5, 0.875)
    for bad, message in [(dict(prune=1.0), "prune"), (dict(delta=0.0), "delta")]:
        with pytest.raises(ValueError, match=message):
            InfoBatchOptions(**bad)
    context = RunContext(n=100, batch_size=10, epochs=10, num_classes=10, seed=3)
    options = InfoBatchOptions()
    options.check(context)
    assert options.backprop_fraction(context) is None
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        options.check(RunContext(n=100, batch_size=10, epochs=0, num_classes=10))
    assert InfoBatchSampler(100, 0.3, epochs=10, seed=3).options == InfoBatchOptions(prune=0.3)
    assert InfoBatchSampler.observes_losses is True
