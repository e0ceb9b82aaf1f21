"""The epoch-level sampler protocol (sampling/base.py)."""

import pytest
import torch
from torch.utils.data import DistributedSampler

from sievetrain.sampling import (
    EpochSampler,
    GradMatchSampler,
    InfoBatchSampler,
    RS2Sampler,
    SoftRandomSampler,
    soft_random_indices,
)
from sievetrain.train import TrainConfig, Trainer


class Reversed(EpochSampler):
    """All indices, reversed on odd epochs; records what the trainer called."""

    def __init__(self, n):
        super().__init__()
        self.n, self.refreshed = n, []

    def _compute_indices(self, epoch):
        order = torch.arange(self.n)
        return order.flip(0) if epoch % 2 else order

    def refresh(self, model, dataset):
        self.refreshed.append(self.epoch)

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.load_position(state["epoch"], state["position"])


class Plain(EpochSampler):
    """Overrides only what it must: its indices."""

    def _compute_indices(self, epoch):
        return torch.arange(4) + epoch


def test_the_defaults_weigh_nothing_report_nothing_and_refresh_changes_nothing():
    sampler = Plain()
    sampler.set_epoch(2)
    before = list(sampler)
    sampler.refresh(torch.nn.Linear(1, 1), None)
    assert list(sampler) == before == [2, 3, 4, 5]
    assert sampler.sample_weights(torch.arange(3)) is None
    assert sampler.stats() == {}


def test_indices_are_a_function_of_the_epoch_and_resume_at_their_position():
    sampler = Reversed(5)
    sampler.set_epoch(1)
    it = iter(sampler)
    assert [next(it), next(it)] == [4, 3] and sampler.position == 2
    state = sampler.state_dict()
    resumed = Reversed(5)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the usual call at the top of a resumed loop keeps the resume point
    assert list(resumed) == [2, 1, 0]
    with pytest.raises(ValueError, match="position 6 is past"):
        resumed.load_position(1, 6)


def test_the_trainer_refreshes_every_sampler_every_epoch(mnist1d):
    sampler = Reversed(len(mnist1d.train))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    config = TrainConfig(epochs=3, batch_size=500)
    Trainer(model, optimizer, mnist1d.train, mnist1d.test, config=config, sampler=sampler).fit()
    assert sampler.refreshed == [0, 1, 2]


@pytest.mark.parametrize(
    "make",
    [
        Plain,
        lambda: SoftRandomSampler(100, 0.5),
        lambda: GradMatchSampler(100, 0.5, batch_size=10, epochs=4),
    ],
)
@pytest.mark.parametrize(
    "epoch, fragment",
    [(-1, "epoch must be >= 0, got -1"), (1.0, "epoch must be an integer, got 1.0")],
)
def test_every_sampler_refuses_a_bad_epoch(make, epoch, fragment):
    sampler = make()
    sampler.set_epoch(2)
    with pytest.raises(ValueError, match=fragment):
        sampler.set_epoch(epoch)
    assert sampler.epoch == 2


def test_samplers_are_distributed_samplers_whose_attributes_tell_the_truth():
    # Frameworks find a DistributedSampler and neither wrap nor re-shard it; they read these.
    for sampler in (
        SoftRandomSampler(100, 0.5, seed=2, num_replicas=4, rank=3),
        RS2Sampler(100, 0.5, seed=2, num_replicas=4, rank=3),
        InfoBatchSampler(100, epochs=3, seed=2, num_replicas=4, rank=3),
    ):
        sampler.set_epoch(1)
        assert isinstance(sampler, DistributedSampler)
        assert (sampler.num_replicas, sampler.rank, sampler.seed, sampler.epoch) == (4, 3, 2, 1)
        assert sampler.shuffle and sampler.drop_last
        assert sampler.num_samples == len(sampler) == len(list(sampler))
        assert sampler.total_size == 4 * len(sampler)
    assert (Plain().num_replicas, Plain().rank) == (1, 0)  # a sampler that does not shard
    assert GradMatchSampler(100, 0.5, batch_size=10, epochs=4, seed=5).seed == 5


def test_rank_0s_state_resumes_every_rank_and_num_replicas_must_match():
    first, second = (SoftRandomSampler(100, 0.5, seed=1, num_replicas=2, rank=r) for r in (0, 1))
    first.set_epoch(2)
    iterator = iter(first)
    [next(iterator) for _ in range(3)]
    state = first.state_dict()
    second.load_state_dict(state)  # rank is not part of the config
    second.set_epoch(2)
    share = soft_random_indices(100, 0.5, seed=1, epoch=2, num_replicas=2, rank=1)
    assert list(second) == share[3:].tolist()  # rank 0's position, rank 1's share
    with pytest.raises(ValueError, match="num_replicas=2, this sampler has 1"):
        SoftRandomSampler(100, 0.5, seed=1).load_state_dict(state)
