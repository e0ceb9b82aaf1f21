"""SIFT: the top-k rule on early-exit scores, and RandomKeep, its uniform control."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sievetrain.losses import sample_losses
from sievetrain.selection import (
    SIFT,
    RandomKeep,
    keep_count,
    scoring_mode,
    select_top_k,
)
from sievetrain.train import TrainConfig, Trainer

# Shared helpers (make_model, train, state, round_trip) are fixtures in conftest.py.

# -- degenerate cases first ------------------------------------------------------


@pytest.mark.parametrize("head", ["linear", "reuse"])
def test_keeping_every_sample_equals_vanilla_training_exactly(mnist1d, head, train, state):
    """ratio 1: the scoring pass runs (and a linear head trains) on every batch, yet
    parameters, batch-norm statistics and the whole history match vanilla bitwise."""
    stage = "stem" if head == "linear" else "head"
    vanilla, plain = train(mnist1d, None, epochs=2)
    sift, summary = train(mnist1d, SIFT(1.0, stage=stage, head=head, num_classes=10), epochs=2)
    a, b = state(vanilla.model), state(sift.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ("test_accuracy", "test_loss", "train_loss")
    assert [[h[k] for k in keys] for h in plain.history] == [
        [h[k] for k in keys] for h in summary.history
    ]
    assert summary.samples_forwarded_partially == 2 * len(mnist1d.train)
    assert summary.samples_backpropagated == plain.samples_backpropagated


def test_exit_at_the_last_layer_picks_the_true_top_k_losses(mnist1d, make_model):
    model = make_model(mnist1d)
    x, y = mnist1d.train.tensors[0][:100], mnist1d.train.tensors[1][:100]
    selector = SIFT(0.3, stage="head", head="reuse")
    keep = selector.select(model, x, y)
    with scoring_mode(model), torch.no_grad():
        true = sample_losses(model(x), y)
    assert keep.tolist() == sorted(torch.topk(true, 30).indices.tolist())


# -- sizes and indices (properties) ---------------------------------------------------


@given(st.integers(1, 512), st.floats(0.001, 1.0))
def test_keep_count_follows_the_rounding_rule(batch, ratio):
    k = keep_count(batch, ratio)
    assert 1 <= k <= batch
    # The smallest count that keeps at least a fraction `ratio` (up to round-off).
    assert k >= ratio * batch - 1e-6
    assert k == 1 or k - 1 < ratio * batch - 1e-6
    assert keep_count(10, 0.3) == 3 and keep_count(128, 0.5) == 64 and keep_count(3, 0.5) == 2


@given(st.lists(st.floats(-10, 10), min_size=1, max_size=200), st.floats(0.01, 1.0))
def test_top_k_has_a_fixed_size_unique_sorted_positions_and_the_largest_scores(values, ratio):
    scores = torch.tensor(values)
    k = keep_count(len(values), ratio)
    keep = select_top_k(scores, k)
    assert len(keep) == k and len(set(keep.tolist())) == k
    assert keep.tolist() == sorted(keep.tolist()) and 0 <= keep.min() and keep.max() < len(values)
    dropped = torch.ones(len(values), dtype=torch.bool)
    dropped[keep] = False
    if dropped.any():
        assert scores[keep].min() >= scores[dropped].max()


@given(st.integers(1, 300), st.floats(0.01, 1.0), st.integers(0, 2**31))
def test_random_keep_has_a_fixed_size_and_unique_positions(batch, ratio, seed):
    y = torch.zeros(batch, dtype=torch.long)
    keep = RandomKeep(ratio, seed=seed).select(None, None, y)
    assert len(keep) == keep_count(batch, ratio) == len(set(keep.tolist()))
    assert keep.tolist() == sorted(keep.tolist()) and keep.max() < batch


def test_sift_output_size_is_fixed_on_real_batches(mnist1d, make_model):
    model = make_model(mnist1d)
    x, y = mnist1d.train.tensors
    selector = SIFT(0.3, stage="stem", num_classes=10, score="entropy")
    for size in (1, 7, 64, 129):
        keep = selector.select(model, x[:size], y[:size])
        assert len(keep) == keep_count(size, 0.3) == len(set(keep.tolist()))


def test_warmup_keeps_whole_batches(mnist1d, make_model):
    model = make_model(mnist1d)
    x, y = mnist1d.train.tensors[0][:64], mnist1d.train.tensors[1][:64]
    selector = SIFT(0.5, stage="stem", num_classes=10, warmup_steps=2)
    assert [selector.select(model, x, y) is None for _ in range(3)] == [True, True, False]


# -- state round trips (Selective Backprop's is in test_selective_backprop.py) -------


@pytest.mark.parametrize(
    "make",
    [
        lambda: SIFT(0.5, stage="stage1", head="linear", num_classes=10),
        lambda: SIFT(0.25, stage="stem", num_classes=10, score="entropy", warmup_steps=1),
        lambda: RandomKeep(0.5, seed=3),
    ],
    ids=["sift-linear", "sift-entropy", "random-keep"],
)
def test_selectors_round_trip_through_state_dict(make, round_trip):
    straight, expected, resumed, got = round_trip(make)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert resumed.stats() == straight.stats()


# -- bad input --------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda: SIFT(0.0), "ratio=0.0"),
        (lambda: SIFT(1.5), "ratio=1.5"),
        (lambda: SIFT(0.5, score="margin"), "'margin'"),
        (lambda: SIFT(0.5, head="mlp"), "'mlp'"),
        (lambda: SIFT(0.5, warmup_steps=-1), "warmup_steps=-1"),
        (lambda: RandomKeep(2.0), "ratio=2.0"),
    ],
)
def test_bad_arguments_name_the_value(build, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        build()


def test_sift_on_the_masked_lm_reuses_its_head_after_layer1():
    from sievetrain.data import load_dataset
    from sievetrain.models import MLMTransformer

    data = load_dataset("shakespeare", train_size=128, test_size=64)
    torch.manual_seed(0)
    model = MLMTransformer(data.num_classes, max_len=128, d_model=32, n_heads=2, n_layers=2)
    selector = SIFT(0.5)
    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=1e-3),
        data.train,
        data.test,
        config=TrainConfig(epochs=1, batch_size=32, schedule="constant"),
        selector=selector,
    )
    summary = trainer.fit()
    assert summary.selector["exit_stage"] == "layer1"
    assert summary.selector["exit_head"] == "reuse"
    assert summary.samples_backpropagated == 64
    assert summary.samples_forwarded_partially == 128
    assert -1 <= summary.final_exit_spearman <= 1
    assert 0 < summary.final_test_accuracy < 1
