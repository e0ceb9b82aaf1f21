"""GRAD-MATCH: the closed-form gradient, OMP, the warm-start schedule and the sampler."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sievetrain.data import load_dataset
from sievetrain.models import build_model
from sievetrain.rng import make_generator
from sievetrain.sampling import (
    GradMatchSampler,
    SoftRandomSampler,
    batch_gradients,
    batch_partition,
    gradmatch_select,
    warm_start_schedule,
)
from sievetrain.train import TrainConfig, Trainer

PROPERTY = settings(max_examples=30, deadline=None)


@PROPERTY
@given(seed=st.integers(0, 2**32), n=st.integers(1, 30), data=st.data())
def test_selection_fills_exactly_the_budget_with_distinct_batches(seed, n, data):
    budget = data.draw(st.integers(1, n))
    columns = torch.randn(12, n, generator=make_generator(seed, "cols"))
    batches, weights, by_omp = gradmatch_select(
        columns, budget, generator=make_generator(seed, "fill")
    )
    assert len(batches) == budget == len(set(batches.tolist()))
    assert 0 <= by_omp <= budget and bool((weights > 0).all())
    assert bool((weights[by_omp:] == 1).all())  # the random fill has weight 1
    assert 0 <= int(batches.min()) and int(batches.max()) < n


# -- the selected subset on real data -------------------------------------------


@pytest.fixture(scope="module")
def fashion(fashion_mnist_dir):  # skips without the data
    return load_dataset("fashion-mnist", train_size=3200, test_size=10)


def _full_parameter_gradient(model, dataset, batches, weights):
    """sum_j w_j * (mean gradient of batch j) / sum_j w_j over all parameters, by autograd."""
    x, y = dataset.tensors
    total = None
    for b, w in zip(batches, weights.tolist(), strict=True):
        model.zero_grad()
        F.cross_entropy(model(x[b]), y[b]).backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()]) * w
        total = grad if total is None else total + grad
    return total / float(weights.sum())


def test_weighted_selection_matches_the_full_gradient_better_than_random_batches(fashion):
    """On Fashion-MNIST, the chosen weighted batches' gradient (a weighted mean, as
    the loss uses the weights) is closer to the full data's than a random set of as
    many batches is on average, for the last layer (what OMP matches) and for every
    parameter. (Greedy OMP is not optimal: a lucky random draw can beat it.)"""
    torch.manual_seed(0)
    model = build_model("fashion-cnn", num_classes=10, input_shape=(1, 28, 28))
    batches = list(batch_partition(3200, 128, seed=0))  # 25 full batches
    columns = batch_gradients(model, fashion.train, batches)  # (d, 25)
    budget = 5
    chosen, weights, _ = gradmatch_select(columns, budget)
    target = columns.mean(dim=1)  # the full data's mean last-layer gradient

    def last_layer_error(ids, w):
        return ((columns[:, ids] @ w.float()) / w.sum().float() - target).norm()

    g = make_generator(0, "random-batches")
    randoms = [torch.randperm(25, generator=g)[:budget] for _ in range(20)]
    ones = torch.ones(budget)
    random_mean = sum(last_layer_error(r, ones) for r in randoms) / len(randoms)
    assert last_layer_error(chosen, weights) < 0.9 * random_mean

    model.train()
    every = torch.ones(25)
    full = _full_parameter_gradient(model, fashion.train, batches, every)
    ours = _full_parameter_gradient(model, fashion.train, [batches[i] for i in chosen], weights)
    random_errors = [
        (
            _full_parameter_gradient(model, fashion.train, [batches[i] for i in r], ones) - full
        ).norm()
        for r in randoms[:5]
    ]
    assert (ours - full).norm() < sum(random_errors) / len(random_errors)


# -- the warm-start schedule ----------------------------------------------------


@pytest.mark.parametrize(
    "epochs, kappa, ratio, expected",
    [
        (20, 0.5, 0.1, (1, 10)),  # 1 full + 10 x 0.1 = 2 = 0.1 x 20 epochs of compute
        (20, 0.5, 0.05, (1, 10)),  # 0.5 rounds half up
        (20, 0.5, 0.3, (3, 10)),
        (10, 0.5, 0.3, (2, 5)),  # 1.5 -> 2
        (4, 0.5, 0.2, (0, 2)),  # 0.4 -> 0 full epochs, 2 skipped
        (7, 0.5, 1.0, (3, 3)),  # floor(3.5) = 3; round(3.5) = 4 is capped at 3
        (20, 0.0, 0.3, (0, 0)),  # no warm start
    ],
)
def test_warm_start_schedule_worked_values(epochs, kappa, ratio, expected):
    assert warm_start_schedule(epochs, kappa, ratio) == expected


@PROPERTY
@given(
    epochs=st.integers(1, 400),
    kappa=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.9]),
    ratio=st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]),
)
def test_warm_start_epoch_accounting_matches_the_formula(epochs, kappa, ratio):
    """The sampler trains round(κ E r) full epochs, skips up to floor(κ E), then
    trains on the subset: per-epoch lengths follow, and compute is r x full's."""
    n, batch = 12800, 128  # 100 candidate batches
    sampler = GradMatchSampler(n, ratio, batch_size=batch, epochs=epochs, kappa=kappa)
    lengths = []
    for e in range(epochs):
        sampler.set_epoch(e)
        lengths.append(len(sampler))
    start = math.floor(Fraction(str(kappa)) * epochs)
    full = min(
        math.floor(Fraction(str(kappa)) * epochs * Fraction(str(ratio)) + Fraction(1, 2)), start
    )
    if ratio == 1:
        assert lengths == [n] * epochs
        return
    subset = round(ratio * 100) * batch  # ratio * 100 is a whole number here
    assert lengths == [n] * full + [0] * (start - full) + [subset] * (epochs - start)
    # Compute: κE r rounded to whole full epochs, plus (E - floor(κE)) subset epochs,
    # is r x E epochs of the full data up to the two roundings.
    assert abs(sum(lengths) / n - ratio * epochs) <= 0.5 + ratio + 1e-9


# -- the sampler ----------------------------------------------------------------


def test_ratio_one_selects_everything_and_trains_as_full_data(mnist1d):
    sampler = GradMatchSampler(len(mnist1d.train), 1.0, batch_size=64, epochs=2)
    sampler.set_epoch(1)
    sampler.refresh(None, mnist1d.train)  # nothing to choose: the model is never read
    assert sorted(sampler.epoch_indices().tolist()) == list(range(len(mnist1d.train)))
    assert sampler.sample_weights(torch.arange(5)) is None and sampler.selections == []

    def train(sampler):
        torch.manual_seed(0)
        model = build_model("mnist1d-cnn", num_classes=10, input_shape=(1, 40))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        cfg = TrainConfig(epochs=2, batch_size=64)
        Trainer(model, opt, mnist1d.train, mnist1d.test, config=cfg, sampler=sampler).fit()
        return model.state_dict()

    ours = train(GradMatchSampler(len(mnist1d.train), 1.0, batch_size=64, epochs=2))
    full = train(SoftRandomSampler(len(mnist1d.train), 1.0))
    for key in full:
        assert torch.equal(ours[key], full[key]), key


def _model():
    torch.manual_seed(0)
    return build_model("mnist1d-cnn", num_classes=10, input_shape=(1, 40))


def test_a_subset_epoch_yields_the_chosen_batches_with_their_weights(mnist1d):
    n = len(mnist1d.train)
    sampler = GradMatchSampler(n, 0.25, batch_size=64, epochs=4, kappa=0.0, seed=3)
    sampler.set_epoch(0)
    with pytest.raises(RuntimeError, match="refresh"):
        iter(sampler)
    sampler.refresh(_model(), mnist1d.train)
    indices = sampler.epoch_indices()
    budget = round(0.25 * (n // 64))
    assert len(indices) == len(sampler) == budget * 64 == len(set(indices.tolist()))
    partition = batch_partition(n, 64, seed=3)
    state = sampler.state_dict()
    expected = torch.zeros(n)
    for b, w in zip(state["batches"].tolist(), state["batch_weights"].tolist(), strict=True):
        expected[partition[b]] = w
    torch.testing.assert_close(sampler.sample_weights(indices), expected[indices])
    assert sorted(indices.tolist()) == sorted(
        torch.cat([partition[b] for b in state["batches"]]).tolist()
    )


def test_selection_follows_the_interval_and_round_trips_through_state_dict(mnist1d):
    n, model = len(mnist1d.train), _model()
    make = lambda: GradMatchSampler(n, 0.2, batch_size=64, epochs=6, interval=2, kappa=0.0)  # noqa: E731
    sampler = make()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        sampler.refresh(model, mnist1d.train)
    assert [s["epoch"] for s in sampler.selections] == [0, 2]  # rounds start at 0 and 2
    next(iter(sampler))  # one index into epoch 2
    state = sampler.state_dict()

    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    resumed.refresh(model, mnist1d.train)  # same round: no new selection
    assert resumed.selections == sampler.selections
    assert list(resumed) == sampler.epoch_indices().tolist()[1:]
    assert torch.equal(
        resumed.sample_weights(torch.arange(n)), sampler.sample_weights(torch.arange(n))
    )
    with pytest.raises(ValueError, match="interval=2"):
        GradMatchSampler(n, 0.2, batch_size=64, epochs=6, interval=3).load_state_dict(state)


def test_a_state_saved_before_ranks_loads_as_a_single_process_one(mnist1d):
    n = len(mnist1d.train)
    make = lambda: GradMatchSampler(n, 0.2, batch_size=64, epochs=2, kappa=0.0)  # noqa: E731
    sampler = make()
    sampler.refresh(_model(), mnist1d.train)
    state = sampler.state_dict()
    assert (state["config"].pop("num_replicas"), state["config"].pop("rank")) == (1, 0)
    resumed = make()
    resumed.load_state_dict(state)
    assert torch.equal(resumed.epoch_indices(), sampler.epoch_indices())


def test_ranks_share_one_selection_in_disjoint_lockstep_shares(mnist1d):
    """Without a process group, on the ablation (no gradients to exchange): every
    rank draws the same batches and yields ``rank::2`` of one process's epoch."""
    n = len(mnist1d.train)  # 2000: 31 batches of 64, 8 chosen = 512 samples
    make = lambda **ranks: GradMatchSampler(  # noqa: E731
        n, 0.25, batch_size=64, epochs=4, kappa=0.5, match=False, **ranks
    )
    one, shares = make(), [make(num_replicas=2, rank=r) for r in (0, 1)]
    for epoch, expected in enumerate([1000, 0, 256, 256]):  # full, skipped, subset, subset
        for s in (one, *shares):
            s.set_epoch(epoch)
            s.refresh(None, mnist1d.train)
        assert [len(s) for s in shares] == [expected] * 2
        whole, (mine, theirs) = one.epoch_indices(), (s.epoch_indices() for s in shares)
        if epoch >= 2:
            assert torch.equal(mine, whole[0::2]) and torch.equal(theirs, whole[1::2])
        assert not set(mine.tolist()) & set(theirs.tolist())
    matching = GradMatchSampler(n, 0.25, batch_size=64, epochs=4, kappa=0.0, num_replicas=2)
    with pytest.raises(RuntimeError, match="process group of 2 ranks"):
        matching.refresh(_model(), mnist1d.train)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(n=50), "n must be >= 64, got 50"),
        (dict(ratio=0.01), "ratio 0.01 makes the subset empty for 31 full batches"),
        (dict(ratio=0.0), "ratio must be a number in"),
        (dict(kappa=1.0), "kappa must be in"),
        (dict(eps=float("nan")), "eps=nan"),
        (dict(interval=-1), "interval must be >= 0, got -1"),
        (dict(n=10, batch_size=1, ratio=0.1, num_replicas=2), "1 samples < 2 ranks"),
        (dict(num_replicas=2, rank=2), "rank must be"),
    ],
)
def test_bad_configuration_names_the_value(kwargs, fragment):
    args = dict(n=2000, ratio=0.3, batch_size=64, epochs=4) | kwargs
    with pytest.raises(ValueError, match=fragment):
        GradMatchSampler(args.pop("n"), args.pop("ratio"), **args)


def test_a_resumed_run_keeps_its_subset_and_its_schedule(mnist1d, tmp_path):
    """Crash after epoch 1 of a run that selects once every 10 epochs: the resumed run
    selects nothing new and ends where the uninterrupted run ends."""
    from sievetrain.bench import prepare
    from sievetrain.bench.runner import run_one

    class Crash(Exception):
        pass

    def crash(_record):
        raise Crash

    bench = prepare(
        mnist1d,
        ["gradmatch:0.3/interval=10/kappa=0"],
        [0],
        config=TrainConfig(epochs=2, batch_size=64),
    )
    (run,) = bench.runs
    clean = run_one(bench, run, 0)
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Crash):
        run_one(bench, run, 0, checkpoint=checkpoint, on_epoch=crash)
    resumed = run_one(bench, run, 0, checkpoint=checkpoint)
    assert [s["epoch"] for s in resumed["sampler"]["per_selection"]] == [0]
    assert [h["test_accuracy"] for h in resumed["history"]] == [
        h["test_accuracy"] for h in clean["history"]
    ]
    assert (
        resumed["samples_backpropagated"]
        == clean["samples_backpropagated"]
        == 2 * 64 * round(0.3 * 31)
    )


def test_the_ablation_draws_random_batches_with_weight_one_and_reads_no_model(mnist1d):
    sampler = GradMatchSampler(len(mnist1d.train), 0.25, batch_size=64, epochs=2, kappa=0.0)
    ablation = GradMatchSampler(
        len(mnist1d.train), 0.25, batch_size=64, epochs=2, kappa=0.0, match=False
    )
    for s, model in ((sampler, _model()), (ablation, None)):  # None: never read
        s.set_epoch(0)
        s.refresh(model, mnist1d.train)
    assert len(ablation.epoch_indices()) == len(sampler.epoch_indices())
    assert bool((ablation.sample_weights(ablation.epoch_indices()) == 1).all())
    assert ablation.selections[0]["omp_batches"] == 0 < sampler.selections[0]["omp_batches"]
    assert set(ablation.state_dict()["batches"].tolist()) != set(
        sampler.state_dict()["batches"].tolist()
    )
