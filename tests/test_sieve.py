"""Sieve: the step protocol every front end runs (epochs, selection, gathering, the
weighted loss, one checkpoint state)."""

from __future__ import annotations

import pytest
import torch
from own_loop import own_loop  # this folder is on pytest's path
from torch import nn
from torch.utils.data import TensorDataset

from sievetrain import Sieve
from sievetrain.data import IndexedDataset, make_loader
from sievetrain.integrations import ResumableLoader
from sievetrain.sampling import GradMatchSampler, InfoBatchSampler, SoftRandomSampler
from sievetrain.selection import SelectiveBackprop, Selector

N, BATCH = 40, 8


class EveryOther(Selector):
    """Keeps the even positions of a batch; gathers when ``accumulates``."""

    def __init__(self, accumulates: bool) -> None:
        self.accumulates = accumulates

    def select(self, model, x, y):
        return torch.arange(0, len(y), 2)


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N, 3, generator=g), torch.randint(0, 2, (N,), generator=g))


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))


def train(sieve: Sieve, net: nn.Module, epochs: range, *, stop_after: int | None = None):
    """The own-loop recipe; returns the indices of every trained batch and the optimizer.
    With ``stop_after``, the last epoch stops after that many loaded batches, mid-epoch
    (no flush)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = make_loader(data(), BATCH, sampler=sieve.sampler)
    trained = own_loop(sieve, net, optimizer, loader, data(), epochs, stop_after=stop_after)
    return trained, optimizer


def test_a_gathering_selector_trains_full_batches_then_the_remainder():
    sieve = Sieve(SoftRandomSampler(N, 1.0, seed=0), EveryOther(True), batch_size=BATCH)
    sieve.begin_epoch(0, model(), data())
    loader = make_loader(data(), BATCH, sampler=sieve.sampler)
    sizes = [len(idx) for _, _, idx in sieve.batches(loader, model())]
    assert sizes == [8, 8, 4]  # 5 batches of 8 keep 4 each: 20 samples
    assert sieve.position == N and sieve.waiting == 0


def test_without_gathering_each_batch_trains_what_the_selector_keeps_in_its_form():
    sieve = Sieve(SoftRandomSampler(N, 1.0, seed=0), EveryOther(False))
    sieve.begin_epoch(0, model(), data())
    x, y, idx = torch.randn(6, 3), torch.arange(6), torch.arange(10, 16)
    kept = sieve.select((x, y, idx), model())
    assert torch.equal(kept[1], torch.tensor([0, 2, 4])) and torch.equal(kept[0], x[::2])
    batch = {"input_ids": x, "labels": y, "idx": idx, "mask": torch.ones(6, 2)}
    kept = sieve.select(batch, model())
    assert set(kept) == set(batch) and torch.equal(kept["idx"], torch.tensor([10, 12, 14]))
    assert sieve.position == 12


def test_an_empty_batch_flushes_what_waits():
    sieve = Sieve(SoftRandomSampler(N, 1.0, seed=0), EveryOther(True), batch_size=BATCH)
    sieve.begin_epoch(0, model(), data())
    batch = (torch.randn(6, 3), torch.arange(6), torch.arange(6))
    assert sieve.select(batch, model()) is None and sieve.waiting == 3
    end = sieve.empty_batch(batch)
    assert [len(t) for t in end] == [0, 0, 0]
    rest = sieve.select(end, model())
    assert torch.equal(rest[2], torch.tensor([0, 2, 4])) and sieve.waiting == 0
    assert sieve.select(end, model()) is None  # nothing left
    assert Sieve(SoftRandomSampler(N, 1.0)).empty_batch(batch) is None  # no gathering


def test_the_loss_is_the_samplers_and_is_counted():
    sampler = InfoBatchSampler(N, 0.5, epochs=2, seed=0)
    sieve = Sieve(sampler)
    sieve.begin_epoch(0, model(), data())
    logits, y, idx = torch.randn(4, 2), torch.tensor([0, 1, 1, 0]), torch.tensor([3, 5, 7, 9])
    assert torch.equal(sieve.loss(logits, y, idx), sampler.loss(logits, y, idx))
    assert sieve.samples_backpropagated == 4
    assert bool((sampler.scores[idx] != 1).all())  # InfoBatch was fed the losses


@pytest.mark.parametrize("stop_after", [2, 3, 5])
def test_a_state_saved_mid_epoch_resumes_bitwise_with_its_waiting_samples(stop_after):
    def sieve():
        return Sieve(
            SoftRandomSampler(N, 1.0, seed=0),
            SelectiveBackprop(1.0, history=32, full_epochs=0, seed=0),
            batch_size=BATCH,
        )

    straight_sieve, straight_net = sieve(), model()
    straight, _ = train(straight_sieve, straight_net, range(3))

    first, first_net = sieve(), model()
    head, optimizer = train(first, first_net, range(2), stop_after=stop_after)
    state = {"sieve": first.state_dict(), "net": first_net.state_dict()}
    assert state["sieve"]["sampler"]["position"] == stop_after * BATCH
    if stop_after == 3:
        assert state["sieve"]["waiting"] is not None  # kept samples not yet trained

    resumed, resumed_net = sieve(), model()
    resumed_net.load_state_dict(state["net"])
    resumed.load_state_dict(state["sieve"])
    tail, _ = train(resumed, resumed_net, range(1, 3))
    assert head + tail == straight
    for a, b in zip(resumed_net.parameters(), straight_net.parameters(), strict=True):
        assert torch.equal(a, b)
    losses = [s.state_dict()["selector"]["recent_losses"] for s in (resumed, straight_sieve)]
    assert torch.equal(*losses) and len(losses[0]) == 32
    assert resumed.samples_backpropagated == straight_sieve.samples_backpropagated


def test_the_position_is_the_samples_selected_not_the_ones_a_loader_pulled_ahead():
    sampler = SoftRandomSampler(N, 1.0, seed=0)
    sieve = Sieve(sampler)
    loader = ResumableLoader(IndexedDataset(data()), BATCH, sampler=sampler)
    sieve.begin_epoch(0, model(), data())
    batches = iter(loader)
    first, _ = next(batches), next(batches)  # a framework fetched two, trained one
    sieve.select(first, model())
    assert sampler.position == 2 * BATCH
    assert sieve.state_dict()["sampler"]["position"] == BATCH


def test_beginning_an_epoch_again_changes_nothing_and_a_loaded_one_continues():
    net = model()
    sieve = Sieve(SoftRandomSampler(N, 1.0, seed=0), EveryOther(True), batch_size=BATCH)
    sieve.begin_epoch(2, net, data())
    sieve.select((torch.randn(8, 3), torch.arange(8), torch.arange(8)), net)
    sieve.begin_epoch(2, net, data())  # a second hook of the same epoch
    assert sieve.position == 8 and sieve.waiting == 4
    again = Sieve(SoftRandomSampler(N, 1.0, seed=0), EveryOther(True), batch_size=BATCH)
    again.load_state_dict(sieve.state_dict())
    again.begin_epoch(2, net, data())
    assert again.position == 8 and again.waiting == 4
    again.begin_epoch(3, net, data())
    assert again.position == 0 and again.waiting == 0


def test_a_coreset_refreshes_at_the_epochs_begin():
    sampler = GradMatchSampler(N, 0.5, batch_size=BATCH, epochs=2, kappa=0.0, seed=0)
    with pytest.raises(RuntimeError, match="refresh"):
        sampler.set_epoch(0)
        len(list(sampler))
    sieve = Sieve(GradMatchSampler(N, 0.5, batch_size=BATCH, epochs=2, kappa=0.0, seed=0))
    sieve.begin_epoch(0, model(), IndexedDataset(data()))  # the index is unwrapped
    assert len(list(sieve.sampler)) == 3 * BATCH  # half of the 5 batches, rounded half up


def test_an_old_trainer_checkpoint_without_waiting_samples_loads():
    sieve = Sieve(SoftRandomSampler(N, 1.0, seed=0))
    old = {"sampler": sieve.sampler.state_dict(), "selector": {}}
    sieve.load_state_dict(old)
    assert sieve.samples_backpropagated == 0 and sieve.waiting == 0


def test_bad_input_names_the_value():
    sampler = SoftRandomSampler(N, 1.0)
    with pytest.raises(TypeError, match="EpochSampler, got list"):
        Sieve([0, 1])
    with pytest.raises(TypeError, match="Selector or None, got str"):
        Sieve(sampler, "sift")
    with pytest.raises(ValueError, match="batch_size.*SelectiveBackprop"):
        Sieve(sampler, SelectiveBackprop(1.0))
    with pytest.raises(ValueError, match="num_replicas=2 ranks but the process group has 1"):
        Sieve(SoftRandomSampler(N, 1.0, num_replicas=2, rank=0)).check_world()
    sieve = Sieve(sampler)
    with pytest.raises(ValueError, match=r"lacks \['labels'\].*IndexedDataset"):
        sieve.select({"input_ids": torch.zeros(2, 3), "idx": torch.arange(2)}, model())
    with pytest.raises(ValueError, match="must be \\(x, y, idx\\)"):
        sieve.select((torch.zeros(2, 3), torch.zeros(2)), model())
    with pytest.raises(ValueError, match="no sample to train"):
        sieve.loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), torch.zeros(0))
