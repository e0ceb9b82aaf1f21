"""SIFT, its early exit, uniform random keep, and Selective Backprop."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sievetrain._rng import derive_seed
from sievetrain.losses import sample_losses
from sievetrain.models import DEFAULT_MODEL, build_model
from sievetrain.optim import build_optimizer
from sievetrain.sampling import SoftRandomSampler
from sievetrain.selection import (
    SIFT,
    EarlyExit,
    RandomKeep,
    SelectiveBackprop,
    keep_count,
    keep_probabilities,
    scoring_mode,
    select_top_k,
)
from sievetrain.train import TrainConfig, Trainer


def make_model(data, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(seed, "init"))
        return build_model(
            DEFAULT_MODEL[data.name], num_classes=data.num_classes, input_shape=data.input_shape
        )


def train(data, selector, *, epochs=1, batch_size=64):
    model = make_model(data)
    trainer = Trainer(
        model,
        build_optimizer("sgd", model.parameters()),
        data.train,
        data.test,
        config=TrainConfig(epochs=epochs, batch_size=batch_size),
        sampler=SoftRandomSampler(len(data.train), 1.0, seed=0),
        selector=selector,
        seed=0,
    )
    return trainer, trainer.fit()


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# -- degenerate cases first ------------------------------------------------------


@pytest.mark.parametrize("head", ["linear", "reuse"])
def test_keeping_every_sample_equals_vanilla_training_exactly(mnist1d, head):
    """ratio 1: the scoring pass runs (and a linear head trains) on every batch, yet
    parameters, batch-norm statistics and the whole history match vanilla bitwise."""
    stage = "stem" if head == "linear" else "head"
    vanilla, plain = train(mnist1d, None, epochs=2)
    sift, summary = train(mnist1d, SIFT(1.0, stage=stage, head=head, num_classes=10), epochs=2)
    a, b = state(vanilla.model), state(sift.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ("test_accuracy", "test_loss", "train_loss")
    assert [[h[k] for k in keys] for h in plain["history"]] == [
        [h[k] for k in keys] for h in summary["history"]
    ]
    assert summary["samples_forwarded_partially"] == 2 * len(mnist1d.train)
    assert summary["samples_backpropagated"] == plain["samples_backpropagated"]


def test_exit_at_the_last_layer_picks_the_true_top_k_losses(mnist1d):
    model = make_model(mnist1d)
    x, y = mnist1d.train.tensors[0][:100], mnist1d.train.tensors[1][:100]
    selector = SIFT(0.3, stage="head", head="reuse")
    keep = selector.select(model, x, y)
    with scoring_mode(model), torch.no_grad():
        true = sample_losses(model(x), y)
    assert keep.tolist() == sorted(torch.topk(true, 30).indices.tolist())


# -- the early exit ---------------------------------------------------------------


def test_removing_an_exit_restores_the_model_bitwise(mnist1d):
    model = make_model(mnist1d)
    x, y = mnist1d.train.tensors[0][:64], mnist1d.train.tensors[1][:64]
    model.train()
    before_state = state(model)
    with torch.no_grad():
        before = model(x)
    exit_ = EarlyExit(model, "stage1", head="linear", num_classes=10)
    exit_.logits(model, x, y)  # a scoring pass with a training step of the head
    with torch.no_grad():
        during = model(x)  # an ordinary forward with the hook present but not armed
    exit_.remove()
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert not any(m._forward_hooks for m in model.modules())
    assert list(state(model)) == list(before_state)  # no submodule was added


def test_scoring_pass_stops_at_the_exit_and_has_no_side_effects(mnist1d):
    model = make_model(mnist1d)
    model.train()
    ran = []
    model.stage2.register_forward_hook(lambda *_: ran.append("stage2"))
    x, y = mnist1d.train.tensors[0][:64], mnist1d.train.tensors[1][:64]
    before = state(model)
    rng = torch.random.get_rng_state()
    SIFT(0.5, stage="stem", num_classes=10).select(model, x, y)
    assert ran == []  # the stages after the exit never ran
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. batch-norm stats
    assert torch.equal(rng, torch.random.get_rng_state())


def test_auto_head_reuses_the_model_head_where_it_fits(mnist1d):
    model = make_model(mnist1d)  # stage2 ends where the head starts; the stem is narrower
    x, y = mnist1d.train.tensors[0][:32], mnist1d.train.tensors[1][:32]
    reuse = EarlyExit(model, "stage2", num_classes=10)
    linear = EarlyExit(model, "stem", num_classes=10)
    with scoring_mode(model):
        assert reuse.logits(model, x, y).shape == (32, 10)
        assert linear.logits(model, x, y).shape == (32, 10)
    assert (reuse.kind, linear.kind) == ("reuse", "linear")
    assert sum(p.numel() for p in linear.linear.parameters()) == 32 * 4 * 10 + 10


def test_the_linear_exit_head_learns(mnist1d):
    model = make_model(mnist1d)
    model.train()
    selector = SIFT(0.5, stage="stage1", head="linear", num_classes=10, head_lr=1e-2)
    x, y = mnist1d.train.tensors
    first = sample_losses(
        selector.attach(model).logits(model, x[:500], y[:500], train_head=False), y[:500]
    )
    for start in range(0, 2000, 100):
        selector.select(model, x[start : start + 100], y[start : start + 100])
    later = selector.exit.logits(model, x[:500], y[:500], train_head=False)
    assert sample_losses(later, y[:500]).mean() < 0.8 * first.mean()


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


def test_sift_output_size_is_fixed_on_real_batches(mnist1d):
    model = make_model(mnist1d)
    x, y = mnist1d.train.tensors
    selector = SIFT(0.3, stage="stem", num_classes=10, score="entropy")
    for size in (1, 7, 64, 129):
        keep = selector.select(model, x[:size], y[:size])
        assert len(keep) == keep_count(size, 0.3) == len(set(keep.tolist()))


def test_warmup_keeps_whole_batches(mnist1d):
    model = make_model(mnist1d)
    x, y = mnist1d.train.tensors[0][:64], mnist1d.train.tensors[1][:64]
    selector = SIFT(0.5, stage="stem", num_classes=10, warmup_steps=2)
    assert [selector.select(model, x, y) is None for _ in range(3)] == [True, True, False]


# -- state round trips ------------------------------------------------------------


def run_selections(selector, model, x, y, steps):
    return [
        selector.select(model, x[i * 64 : (i + 1) * 64], y[i * 64 : (i + 1) * 64]) for i in steps
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda: SIFT(0.5, stage="stage1", head="linear", num_classes=10),
        lambda: SIFT(0.25, stage="stem", num_classes=10, score="entropy", warmup_steps=1),
        lambda: RandomKeep(0.5, seed=3),
        lambda: SelectiveBackprop(2.0, history=100, full_epochs=0, seed=3),
    ],
    ids=["sift-linear", "sift-entropy", "random-keep", "selective-backprop"],
)
def test_selectors_round_trip_through_state_dict(make, mnist1d):
    model = make_model(mnist1d)
    model.train()
    x, y = mnist1d.train.tensors
    straight = make()
    run_selections(straight, model, x, y, range(4))
    expected = run_selections(straight, model, x, y, range(4, 8))

    first = make()
    run_selections(first, model, x, y, range(4))
    saved = first.state_dict()
    resumed = make()
    resumed.load_state_dict(saved)
    got = run_selections(resumed, model, x, y, range(4, 8))
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert resumed.stats() == straight.stats()


# -- Selective Backprop ---------------------------------------------------------------


def test_keep_probability_is_the_loss_percentile_to_the_beta():
    history = torch.arange(1.0, 11.0)  # 1..10
    probs = keep_probabilities(torch.tensor([10.0, 5.0, 1.0]), history, beta=2.0, min_prob=0.05)
    assert torch.allclose(probs, torch.tensor([1.0, 0.25, 0.05], dtype=torch.float64))


def test_selective_backprop_keeps_the_first_epoch_and_fills_full_batches(mnist1d):
    selector = SelectiveBackprop(3.0, seed=0)
    trainer, summary = train(mnist1d, selector, epochs=3)
    n = len(mnist1d.train)
    kept_later = summary["samples_backpropagated"] - n
    # First epoch whole; afterwards about E[p^3] = 1/4 of the samples (plus the floor).
    assert 0.15 * 2 * n < kept_later < 0.4 * 2 * n
    # Kept samples go in full batches of 64: one short remainder per selecting epoch.
    later_steps = summary["optimizer_steps"] - math.ceil(n / 64)
    assert later_steps - math.ceil(kept_later / 64) in (0, 1)
    assert summary["samples_forwarded_fully"] == summary["samples_backpropagated"] + 2 * n
    assert summary["final_exit_spearman"] == pytest.approx(1.0)


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
        (lambda: SelectiveBackprop(0.0), "beta=0.0"),
        (lambda: SelectiveBackprop(3.0, min_prob=1.5), "min_prob=1.5"),
        (lambda: SelectiveBackprop(3.0, history=0), "history=0"),
    ],
)
def test_bad_arguments_name_the_value(build, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        build()


def test_unknown_stage_names_the_stage(mnist1d):
    model = make_model(mnist1d)
    x, y = mnist1d.train.tensors[0][:8], mnist1d.train.tensors[1][:8]
    with pytest.raises(ValueError, match="'stage9'.*stem, stage1, stage2, head"):
        SIFT(0.5, stage="stage9", num_classes=10).select(model, x, y)
    with pytest.raises(ValueError, match="use head='linear'"):
        SIFT(0.5, stage="stem", head="reuse").select(model, x, y)


def test_sift_on_the_masked_lm_reuses_its_head_after_layer1():
    from sievetrain.data import load_dataset
    from sievetrain.models import MLMTransformer

    data = load_dataset("shakespeare", train_size=128, test_size=64)
    torch.manual_seed(0)
    model = MLMTransformer(max_len=128, d_model=32, n_heads=2, n_layers=2)
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
    assert summary["selector"]["exit_stage"] == "layer1"
    assert summary["selector"]["exit_head"] == "reuse"
    assert summary["samples_backpropagated"] == 64
    assert summary["samples_forwarded_partially"] == 128
    assert -1 <= summary["final_exit_spearman"] <= 1
    assert 0 < summary["final_test_accuracy"] < 1
