"""BatchLoader gathers exactly what per-sample indexing would, pulling indices lazily."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from sievetrain.data import BatchLoader, make_loader


def _dataset(n: int = 10) -> TensorDataset:
    x = torch.arange(n * 6, dtype=torch.float32).reshape(n, 2, 3)  # (N, 2, 3)
    y = torch.arange(n, dtype=torch.int64) % 3
    return TensorDataset(x, y)


class CountingSampler:
    """Yields a fixed order and counts how many indices have been pulled."""

    def __init__(self, order: list[int]) -> None:
        self.order = order
        self.pulled = 0

    def __iter__(self):
        for i in self.order:
            self.pulled += 1
            yield i

    def __len__(self) -> int:
        return len(self.order)


class ListDataset(Dataset):
    """A map-style dataset that is not a TensorDataset."""

    def __init__(self, base: TensorDataset) -> None:
        self.items = [base[i] for i in range(len(base))]

    def __getitem__(self, index: int):
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)


def _assert_batches_match(batches, dataset: TensorDataset, order: list[int], batch_size: int):
    expected = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    assert len(batches) == len(expected)
    for (x, y, idx), want in zip(batches, expected, strict=True):
        assert idx.dtype == torch.int64
        assert idx.tolist() == want
        gx, gy = dataset[torch.tensor(want)]
        assert torch.equal(x, gx) and torch.equal(y, gy)


def test_sequential_order_without_sampler():
    data = _dataset(10)
    batches = list(BatchLoader(data, 4))
    _assert_batches_match(batches, data, list(range(10)), 4)
    assert len(BatchLoader(data, 4)) == 3


def test_follows_sampler_order():
    data = _dataset(10)
    order = [7, 2, 9, 0, 0, 5, 3]  # repeats and a subset are allowed
    loader = BatchLoader(data, 3, sampler=order)
    _assert_batches_match(list(loader), data, order, 3)
    assert len(loader) == 3


def test_pulls_indices_lazily_and_afresh_each_epoch():
    sampler = CountingSampler(list(range(10))[::-1])
    loader = BatchLoader(_dataset(10), 4, sampler=sampler)
    batches = iter(loader)
    next(batches)
    assert sampler.pulled == 4  # only the first batch's indices
    next(batches)
    assert sampler.pulled == 8
    assert len(list(batches)) == 1
    assert len(list(loader)) == 3  # a second epoch starts from a fresh iter(sampler)


def test_drop_last():
    data = _dataset(10)
    loader = BatchLoader(data, 4, drop_last=True)
    assert [idx.tolist() for _, _, idx in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(loader) == 2
    with_sampler = BatchLoader(data, 3, sampler=[1, 2, 3, 4, 5], drop_last=True)
    assert [idx.tolist() for _, _, idx in with_sampler] == [[1, 2, 3]]
    assert len(with_sampler) == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="0"):
        BatchLoader(_dataset(), 0)
    with pytest.raises(ValueError, match="TensorDataset"):
        BatchLoader(TensorDataset(torch.zeros(3)), 2)


def test_make_loader_picks_the_fast_path_for_tensors():
    assert isinstance(make_loader(_dataset(), 4), BatchLoader)
    assert isinstance(make_loader(ListDataset(_dataset()), 4), DataLoader)


@pytest.mark.parametrize("sampler", [None, [9, 1, 4, 4, 0, 2, 8]])
@pytest.mark.parametrize("drop_last", [False, True])
def test_dataloader_path_matches_batchloader(sampler, drop_last):
    data = _dataset(10)
    fast = make_loader(data, 3, sampler=sampler, drop_last=drop_last)
    slow = make_loader(ListDataset(data), 3, sampler=sampler, drop_last=drop_last)
    fast_batches, slow_batches = list(fast), list(slow)
    assert len(fast) == len(slow) == len(fast_batches) == len(slow_batches)
    for a, b in zip(fast_batches, slow_batches, strict=True):
        for ta, tb in zip(a, b, strict=True):
            assert ta.dtype == tb.dtype and torch.equal(ta, tb)


def test_dataloader_path_leaves_global_torch_rng_alone():
    state = torch.random.get_rng_state()
    list(make_loader(ListDataset(_dataset()), 4))
    assert torch.equal(torch.random.get_rng_state(), state)
