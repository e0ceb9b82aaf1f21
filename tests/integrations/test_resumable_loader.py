"""ResumableLoader: a DataLoader whose state is its sampler's, at the batches trained."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from sievetrain.data import IndexedDataset
from sievetrain.integrations import ResumableLoader
from sievetrain.sampling import InfoBatchSampler, SoftRandomSampler

N, BATCH = 100, 8


def _data() -> IndexedDataset:
    return IndexedDataset(TensorDataset(torch.randn(N, 3), torch.arange(N)))


def _loader(**kwargs) -> ResumableLoader:
    return ResumableLoader(_data(), BATCH, sampler=SoftRandomSampler(N, 0.5, seed=0), **kwargs)


def _epoch(loader: ResumableLoader, epoch: int) -> torch.Tensor:
    loader.set_epoch(epoch)
    return torch.cat([torch.empty(0, dtype=torch.long), *(idx for _, _, idx in loader)])


def test_indexed_dataset_appends_the_index_to_tuples_and_adds_it_to_dicts():
    class Dicts(Dataset):
        def __getitem__(self, i):
            return {"input_ids": i * 10}

        def __len__(self):
            return 3

    assert IndexedDataset(TensorDataset(torch.arange(3)))[2] == (torch.tensor(2), 2)
    assert IndexedDataset(Dicts())[1] == {"input_ids": 10, "idx": 1}
    assert len(IndexedDataset(Dicts())) == 3


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("handed", [0, 3, 7])
def test_a_mid_epoch_state_resumes_at_the_batches_handed_out(workers, handed):
    # Workers pull indices ahead of training; the state counts what was handed out.
    loader = _loader(num_workers=workers)
    loader.set_epoch(2)
    batches = iter(loader)
    first = [next(batches)[2] for _ in range(handed)]
    state = loader.state_dict()
    assert state["epoch"] == 2
    assert state["position"] == min(handed * BATCH, len(loader.sampler))

    resumed = _loader()
    resumed.load_state_dict(state)
    assert resumed.state_dict()["position"] == state["position"]  # before its first batch
    rest = _epoch(resumed, 2)  # the loop's usual set_epoch keeps the loaded position
    assert torch.equal(torch.cat([*first, rest]), loader.sampler.epoch_indices())


def test_batches_done_overrides_a_look_ahead():
    loader = _loader()
    loader.set_epoch(1)
    batches = iter(loader)
    for _ in range(4):  # a framework fetched four batches and trained three
        next(batches)
    loader.batches_done = 3
    assert loader.state_dict()["position"] == 3 * BATCH
    loader.batches_done = 100  # never past the epoch's end
    assert loader.state_dict()["position"] == len(loader.sampler)


def test_the_position_counts_from_a_resumed_start_and_resets_with_the_next_epoch():
    loader = _loader()
    loader.load_state_dict({**_loader().state_dict(), "epoch": 3, "position": 2 * BATCH})
    loader.set_epoch(3)
    batches = iter(loader)
    next(batches)
    assert loader.state_dict()["position"] == 3 * BATCH
    list(batches)
    assert loader.state_dict()["position"] == len(loader.sampler)
    loader.set_epoch(4)  # no batch of epoch 4 yet: the sampler's own state
    assert loader.state_dict() == {**loader.sampler.state_dict(), "epoch": 4, "position": 0}


def test_every_epoch_is_a_fresh_subset():
    loader = _loader()
    first, second = _epoch(loader, 0), _epoch(loader, 1)
    assert len(first) == len(second) == 50 and not torch.equal(first.sort()[0], second.sort()[0])


def test_infobatch_state_goes_through_the_loader_with_its_plan():
    sampler = InfoBatchSampler(N, 0.5, epochs=4, seed=0)
    loader = ResumableLoader(_data(), BATCH, sampler=sampler)
    for epoch in range(2):
        loader.set_epoch(epoch)
        for _, y, idx in loader:
            sampler.observe_losses(idx, y.float())  # a loss that grows with the index
    loader.set_epoch(2)
    batches = iter(loader)
    next(batches)
    state = loader.state_dict()
    resumed = ResumableLoader(_data(), BATCH, sampler=InfoBatchSampler(N, 0.5, epochs=4, seed=0))
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    rest = torch.cat([idx for _, _, idx in resumed])
    assert torch.equal(rest, sampler.epoch_indices()[BATCH:])
    assert len(sampler) < N  # the losses pruned some samples


def test_bad_input_names_the_value():
    with pytest.raises(TypeError, match="RandomSampler"):
        ResumableLoader(_data(), BATCH, sampler=torch.utils.data.RandomSampler(range(N)))
    with pytest.raises(ValueError, match="position"):
        _loader().load_state_dict({**_loader().state_dict(), "position": -1})
    with pytest.raises(ValueError, match="ratio"):
        _loader().load_state_dict({**SoftRandomSampler(N, 0.4, seed=0).state_dict(), "position": 0})


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("lightning", "lightning", "lightning"),
        ("hf", "transformers", "hf"),
        ("accelerate", "accelerate", "hf"),
    ],
)
def test_a_framework_module_without_its_framework_names_the_extra(
    monkeypatch, module, framework, extra
):
    monkeypatch.setitem(sys.modules, framework, None)  # as if not installed
    monkeypatch.delitem(sys.modules, f"sievetrain.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'sievetrain\[{extra}\]'"):
        importlib.import_module(f"sievetrain.integrations.{module}")
