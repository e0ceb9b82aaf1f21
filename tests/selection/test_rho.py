"""RHO-LOSS and Rho-1: the reference phase, its costs, its state, and what they select."""

from __future__ import annotations

import copy

import pytest
import torch
from own_loop import own_loop  # this folder is on pytest's path
from torch import nn
from torch.utils.data import TensorDataset

from sievetrain import Sieve
from sievetrain.data import make_loader
from sievetrain.losses import IGNORE_INDEX, batch_loss
from sievetrain.sampling import SoftRandomSampler
from sievetrain.selection import Rho1, RhoLoss, RhoLossOptions, SelectiveBackprop
from sievetrain.selection.reference import plan_reference
from sievetrain.selection.rho import keep_tokens
from sievetrain.train import TrainConfig, Trainer

# A strong enough reference on little data: a few hundred samples, a brisk learning rate.
REFERENCE = {"ref_epochs": 30, "ref_batch": 32, "ref_lr": 0.01, "patience": 5}


def noisy_task(n: int = 3000, noise: float = 0.2, seed: int = 0):
    """A linear rule in 8 dimensions with a ``noise`` share of the labels flipped."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x @ torch.randn(8, generator=g) > 0).long()
    flipped = torch.rand(n, generator=g) < noise
    return x, torch.where(flipped, 1 - y, y), y, flipped


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))


def trainer(selector, *, epochs=3, n=3000, **config) -> Trainer:
    x, noisy_y, clean_y, flipped = noisy_task(n)
    model = net()
    return Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        TensorDataset(x, noisy_y),
        TensorDataset(x[:300], clean_y[:300]),
        config=TrainConfig(epochs=epochs, batch_size=50, **config),
        selector=selector,
        flags={"noisy": flipped},
    )


def test_rho_loss_trains_mislabelled_points_below_their_share_and_selective_backprop_above():
    ratios = {}
    for name, selector in (
        ("rho", RhoLoss(0.2, **REFERENCE)),
        ("sb", SelectiveBackprop(3.0, full_epochs=0)),
    ):
        audit = trainer(selector).fit().selection_audit["flags"]["noisy"]
        assert 0.15 < audit["data_share"] < 0.25
        ratios[name] = audit["ratio"]  # share backpropagated / share of the data
    assert ratios["rho"] < 0.6  # well below their share: a reference tells noise apart
    assert ratios["sb"] > 1.3  # a high loss alone keeps them


def test_the_reference_phase_is_charged_in_the_counters_and_its_own_phase():
    t = trainer(RhoLoss(0.3, ref_epochs=4, patience=4), epochs=2)
    summary = t.fit()
    stats = summary.selector
    held = stats["samples_held_out"]
    assert held == 300  # 10 % of 3000
    reference = stats["samples_reference_backpropagated"]
    assert reference == 4 * (held - 60)  # 4 epochs of the holdout less its validation part
    main = t.sieve.samples_backpropagated - reference  # what the run model trained
    assert summary.samples_backpropagated == main + reference
    assert main == sum(e for e in summary.selection_audit["per_epoch_backpropagated"])
    # Scoring: the validation part each epoch, then every sample outside the holdout.
    assert summary.samples_scored == 4 * 60 + (3000 - held)
    assert stats["samples_forwarded_no_grad"] == summary.samples_scored + 2 * (3000 - held)
    assert summary.cpu_breakdown_s["reference"] > 0 and summary.time_breakdown_s["reference"] > 0
    assert summary.train_cpu_s >= sum(summary.cpu_breakdown_s.values()) * 0.99
    assert len(stats["reference_validation_loss"][0]) == 4


def test_holdout_samples_are_never_trained_and_scored_ones_get_their_reference_loss():
    t = trainer(RhoLoss(0.5, ref_epochs=2), epochs=1)
    t.fit()
    plan = t.selector.phase.plan
    trained = t.coverage.state_dict()["seen"]  # every sample the run model trained
    assert not (trained & plan.held_out).any() and bool(trained[~plan.held_out].any())
    losses = t.selector.reference_losses
    assert bool((losses[~plan.held_out] > 0).all()) and bool((losses[plan.held_out] == 0).all())


@pytest.mark.parametrize("n", [10, 11, 1001])
def test_the_twin_split_is_a_partition_and_each_half_is_scored_by_the_other(n):
    plan = plan_reference(n, "twin", holdout=0.1, valid=0.2, seed=3)
    halves = [torch.cat([t, v]) for t, v in zip(plan.train, plan.valid, strict=True)]
    every = torch.cat(halves).sort().values
    assert torch.equal(every, torch.arange(n))  # each sample in exactly one half
    assert torch.equal(plan.score[0], halves[1].sort().values)
    assert torch.equal(plan.score[1], halves[0].sort().values)
    assert not plan.held_out.any()  # nothing is lost to training
    for t, v in zip(plan.train, plan.valid, strict=True):
        assert len(t) and len(v) and not set(t.tolist()) & set(v.tolist())


def test_the_holdout_comes_from_the_pool_and_everything_else_is_scored():
    pool = torch.arange(1000) % 4 == 0  # e.g. the target text
    plan = plan_reference(1000, "holdout", holdout=0.2, valid=0.25, seed=0, pool=pool)
    held = plan.held_out.nonzero().squeeze(1)
    assert len(held) == 50 and bool(pool[held].all())
    assert torch.equal(torch.cat([plan.train[0], plan.valid[0]]).sort().values, held)
    assert torch.equal(plan.score[0], (~plan.held_out).nonzero().squeeze(1))


def test_a_twin_run_trains_two_models_and_scores_every_sample():
    t = trainer(RhoLoss(0.3, reference="twin", ref_epochs=2, patience=2), epochs=1, n=1000)
    summary = t.fit()
    assert summary.selector["samples_held_out"] == 0
    assert len(summary.selector["reference_validation_loss"]) == 2
    assert bool((t.selector.reference_losses > 0).all())
    assert summary.selector["samples_reference_backpropagated"] == 2 * 2 * 400


def _interrupted(make, stop_after_units: int):
    """A Trainer stopped after ``stop_after_units`` reference units, resumed from the
    state saved there, run to the end; returns it."""
    saved = {}

    def save_then_stop(t):
        saved["state"] = copy.deepcopy(t.state_dict())
        if len(saved.setdefault("units", [])) + 1 == stop_after_units:
            raise KeyboardInterrupt
        saved["units"].append(1)

    first = make()
    with pytest.raises(KeyboardInterrupt):
        first.fit(on_reference_epoch=save_then_stop)
    resumed = make()
    resumed.load_state_dict(saved["state"])
    resumed.fit()
    return resumed


@pytest.mark.parametrize("reference", ["holdout", "twin"])
def test_a_run_stopped_during_the_reference_phase_resumes_bitwise(reference):
    def make():
        return trainer(
            RhoLoss(0.3, reference=reference, ref_epochs=3, patience=3), epochs=2, n=1000
        )

    straight = make()
    expected = straight.fit()
    for units in (1, 2, 4):  # mid-model, (twin: between the models), before the scoring
        resumed = _interrupted(make, units)
        got = resumed.summary()
        for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(resumed.selector.reference_losses, straight.selector.reference_losses)
        untimed = lambda history: [  # noqa: E731
            {k: v for k, v in h.items() if "time" not in k} for h in history
        ]
        assert untimed(got.history) == untimed(expected.history)
        assert got.samples_backpropagated == expected.samples_backpropagated
        assert got.samples_scored == expected.samples_scored


def test_a_state_saved_mid_epoch_resumes_bitwise_through_the_sieve():
    x, y, _, _ = noisy_task(400)
    data = TensorDataset(x, y)

    def run(stop_after=None, state=None, epochs=range(2)):
        model = net()
        sieve = Sieve(
            SoftRandomSampler(400, 1.0, seed=0),
            RhoLoss(0.5, candidates=2, ref_epochs=2, **{"ref_batch": 32}),
            batch_size=20,
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            sieve.load_state_dict(state["sieve"])
        loader = make_loader(data, 40, sampler=sieve.sampler)  # candidate batches of 2
        trained = own_loop(sieve, model, optimizer, loader, data, epochs, stop_after=stop_after)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sieve": sieve.state_dict(),
        }
        return trained, copy.deepcopy(state)

    straight, end = run()
    head, middle = run(stop_after=3)
    assert middle["sieve"]["sampler"]["position"] == 3 * 40
    tail, resumed_end = run(state=middle, epochs=range(1, 2))
    assert head + tail == straight
    for key, value in end["model"].items():
        assert torch.equal(value, resumed_end["model"][key])
    # gathered into training batches; each epoch's remainder is one short batch at most
    assert sum(len(batch) != 20 for batch in straight) <= 2 and len(straight) > 10


def test_the_trainer_loads_candidate_batches_of_several_training_batches():
    t = trainer(RhoLoss(0.1, ref_epochs=1), epochs=1, n=1000)
    assert t.selector.candidates == 10
    summary = t.fit()
    kept = summary.samples_backpropagated - summary.selector["samples_reference_backpropagated"]
    # Two candidate batches of 10 x 50, less the holdout: 10 % of what is left of each.
    held = t.selector.phase.plan.held_out[t.sampler.epoch_indices()]
    allowed = [int((~part).sum()) for part in held.split(500)]
    assert len(allowed) == 2 and kept == sum(-(-a // 10) for a in allowed)
    assert summary.optimizer_steps == -(-kept // 50)  # gathered into batches of 50


def test_bad_options_name_the_value():
    with pytest.raises(ValueError, match="candidates=5.*at most 3"):
        RhoLossOptions(ratio=0.3, candidates=5)
    with pytest.raises(ValueError, match="holdout=0.9"):
        RhoLoss(0.1, holdout=0.9)
    with pytest.raises(ValueError, match="reference"):
        RhoLoss(0.1, reference="triplet")
    with pytest.raises(RuntimeError, match="prepare"):
        RhoLoss(0.1).select(net(), torch.zeros(2, 8), torch.zeros(2).long(), torch.arange(2))


def test_keep_tokens_keeps_exactly_its_fraction_of_the_predicted_tokens():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (4, 16), generator=g)
    y[torch.rand(4, 16, generator=g) < 0.5] = IGNORE_INDEX
    excess = torch.randn(4, 16, generator=g)
    predicted = int((y != IGNORE_INDEX).sum())
    for ratio in (0.1, 0.5, 0.6, 1.0):
        kept = keep_tokens(excess, y, ratio)
        mask = kept != IGNORE_INDEX
        assert int(mask.sum()) == -(-round(ratio * predicted, 9) // 1)  # ceil
        assert bool((kept[mask] == y[mask]).all()) and bool((y[mask] != IGNORE_INDEX).all())
        # the largest excesses among the predicted tokens
        dropped = (y != IGNORE_INDEX) & ~mask
        if dropped.any():
            assert excess[mask].min() >= excess[dropped].max()


class TinyLM(nn.Module):
    """Token logits (B, T, V) from token ids (B, T)."""

    def __init__(self, vocab: int = 7) -> None:
        super().__init__()
        self.embed, self.out = nn.Embedding(vocab, 16), nn.Linear(16, vocab)

    def forward(self, x):
        return self.out(torch.relu(self.embed(x)))


def lm_data(n: int = 200, length: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 7, (n, length), generator=g)
    y = torch.where(torch.rand(n, length, generator=g) < 0.4, (x + 1) % 7, IGNORE_INDEX)
    return TensorDataset(x, y)


def test_rho1_changes_the_loss_only_through_the_tokens_it_keeps():
    data = lm_data()
    torch.manual_seed(0)
    model = TinyLM()
    pool = torch.arange(200) < 100  # the target text
    rho1 = Rho1(0.5, ref_epochs=2, ref_batch=16, pool=pool)
    sieve = Sieve(SoftRandomSampler(200, 1.0, seed=0), rho1, batch_size=20)
    sieve.begin_epoch(0, model, data)
    held = rho1.phase.plan.held_out
    assert int(held.sum()) == 10 and bool(pool[held].all())
    assert rho1.reference_losses.shape == (200, 12)
    x, y, idx = next(sieve.batches(make_loader(data, 20, sampler=sieve.sampler), model))
    assert not held[idx].any()  # the target slice is not trained on
    logits = model(x).detach().requires_grad_()
    loss = sieve.loss(logits, y, idx)
    loss.backward()
    counted = rho1.stats()["tokens_kept"]
    kept = rho1.targets(logits.detach(), y, idx) != IGNORE_INDEX
    predicted = int((y != IGNORE_INDEX).sum())
    assert int(kept.sum()) == -(-predicted // 2)
    assert bool((logits.grad[~kept] == 0).all())  # no gradient from a dropped token
    assert bool((logits.grad[kept].abs().sum(-1) > 0).all())
    masked = torch.where(kept, y, IGNORE_INDEX)
    assert torch.allclose(loss, batch_loss(logits.detach(), masked))
    assert counted == int(kept.sum())


def test_rho1_resumes_bitwise_and_counts_its_reference():
    def make():
        torch.manual_seed(0)
        model = TinyLM()
        return Trainer(
            model,
            torch.optim.Adam(model.parameters(), lr=0.01),
            lm_data(),
            lm_data(40, seed=1),
            config=TrainConfig(epochs=2, batch_size=20),
            selector=Rho1(0.6, ref_epochs=2, ref_batch=16),
        )

    straight = make()
    expected = straight.fit()
    assert expected.selector["samples_reference_backpropagated"] == 2 * 16
    resumed = _interrupted(make, 1)
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed.summary().samples_backpropagated == expected.samples_backpropagated


def _two_ranks(rank, world):
    from sievetrain.distributed import all_gather

    t = trainer(RhoLoss(0.3, ref_epochs=2), epochs=2, n=1000)
    summary = t.fit()
    losses = t.selector.reference_losses
    gathered = all_gather(losses[None])
    return {
        "equal_losses": torch.equal(gathered[0], gathered[1]),
        "losses": losses,
        "steps": summary.optimizer_steps,
        "local_steps": t.acct.optimizer_steps,
        "selector": t.selector.state_dict()["samples_forwarded_no_grad"],
        "reported": summary.selector["samples_forwarded_no_grad"],
        "scored": summary.samples_scored,
        "backpropagated": summary.samples_backpropagated,
    }


def test_two_ranks_hold_the_same_reference_losses_and_take_the_same_steps():
    from ranks import run_ranks

    results = run_ranks(_two_ranks)
    alone = trainer(RhoLoss(0.3, ref_epochs=2), epochs=2, n=1000)
    alone.fit()
    for result in results:
        assert result["equal_losses"]
        assert torch.equal(result["losses"], alone.selector.reference_losses)
    assert results[0]["steps"] == results[1]["steps"]
    # The run model's scoring passes, every rank's, the same figure on every rank; the
    # summary counts them once, and each rank's reference scoring (each trains one).
    assert results[0]["selector"] == results[1]["selector"] > 0
    assert results[0]["scored"] == 2 * alone.summary().samples_scored
    assert results[0]["reported"] == results[0]["selector"] + results[0]["scored"]
    assert results[0]["backpropagated"] == results[1]["backpropagated"]
