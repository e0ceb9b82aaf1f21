"""GRAD-MATCH on two gloo ranks, each with its model wrapped in DistributedDataParallel:
one selection for all ranks, equal to one process's, scored a block per rank, and
iterated in disjoint lockstep shares."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

from sievetrain import distributed
from sievetrain.rng import make_generator
from sievetrain.sampling import GradMatchSampler, batch_gradients, soft_random_indices
from sievetrain.sampling.last_layer import scoring_block

# 301 samples in 13 candidate batches of 23 (the global batch); ratio 0.4 chooses 5
# batches = 115 samples, odd: 57 per rank, one dropped. Warm start (κ = 0.5 over 6
# epochs): epoch 0 full data, epochs 1-2 skipped, selections from epoch 3 on.
N, BATCH, BATCHES, BUDGET, SUBSET_EPOCH, WORLD = 301, 23, 13, 5, 3, 2


def _task() -> tuple[TensorDataset, nn.Module]:
    g = make_generator(0, "test-data")
    x = torch.randn(N, 20, generator=g)
    y = (x[:, :10].argmax(dim=1) + torch.randint(0, 2, (N,), generator=g)) % 10  # 10 classes
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))
    return TensorDataset(x, y), model


def _sampler() -> GradMatchSampler:  # num_replicas, rank: from the process group (or 1, 0)
    return GradMatchSampler(N, 0.4, batch_size=BATCH, epochs=6, kappa=0.5, seed=5)


def _observe(sampler: GradMatchSampler, model: nn.Module, dataset: TensorDataset) -> dict:
    """Epochs 0 to SUBSET_EPOCH: lengths known before refresh, indices, the selection."""
    lengths, indices = [], []
    for epoch in range(SUBSET_EPOCH + 1):
        sampler.set_epoch(epoch)
        lengths.append(len(sampler))
        sampler.refresh(model, dataset)
        assert len(sampler) == lengths[-1]
        indices.append(sampler.epoch_indices())
    state = sampler.state_dict()
    return {  # plain lists: tensors would leave a rank through shared memory
        "lengths": lengths,
        "indices": [i.tolist() for i in indices],
        "batches": state["batches"].tolist(),
        "weights": state["batch_weights"].tolist(),  # Python floats: float64, exact
        "log": [{k: v for k, v in s.items() if k != "seconds"} for s in state["selections"]],
    }


def _on_ranks(rank: int, world: int) -> dict:
    dataset, model = _task()
    ddp = DistributedDataParallel(model)
    sampler = _sampler()
    out = _observe(sampler, ddp, dataset)

    # Resume: rank 0's mid-epoch state loads on every rank.
    iterator = iter(sampler)
    for _ in range(5):
        next(iterator)
    state = distributed.broadcast_object(sampler.state_dict())
    resumed = _sampler()
    resumed.load_state_dict(state)
    resumed.set_epoch(SUBSET_EPOCH)
    resumed.refresh(ddp, dataset)  # same round: nothing to select
    everyone = torch.arange(N)
    out["resumed"] = list(resumed)
    out["resumed_weights"] = torch.equal(
        resumed.sample_weights(everyone), sampler.sample_weights(everyone)
    )

    # A DDP step on this rank's share, then the next selection: still one for all ranks.
    idx = torch.tensor(out["indices"][SUBSET_EPOCH][:8])
    x, y = dataset.tensors
    loss = F.cross_entropy(ddp(x[idx]), y[idx], reduction="none")
    (loss * sampler.sample_weights(idx)).mean().backward()
    torch.optim.SGD(ddp.parameters(), lr=0.1).step()
    sampler.set_epoch(SUBSET_EPOCH + 1)
    sampler.refresh(ddp, dataset)
    out["next_batches"] = sampler.state_dict()["batches"].tolist()
    out["in_sync"] = distributed.in_sync(model)
    return out


@pytest.fixture(scope="module")
def ranks_and_reference():
    from ranks import run_ranks  # tests/ is on sys.path: the conftest's folder

    dataset, model = _task()
    reference = _observe(_sampler(), model, dataset)  # one process, the same model
    return run_ranks(_on_ranks, world=WORLD), reference


def test_every_rank_holds_the_single_process_selection(ranks_and_reference):
    (r0, r1), one = ranks_and_reference
    assert r0["batches"] == r1["batches"] and r0["weights"] == r1["weights"]  # rank 0's, sent
    assert r0["batches"] == one["batches"] and len(one["batches"]) == BUDGET
    torch.testing.assert_close(torch.tensor(r0["weights"]), torch.tensor(one["weights"]))
    assert r0["next_batches"] == r1["next_batches"]  # after a DDP step too
    assert r0["in_sync"] and r1["in_sync"]


def test_each_rank_scores_its_block_of_the_candidate_batches(ranks_and_reference):
    (r0, r1), one = ranks_and_reference
    (first,), (second,), (single,) = r0["log"], r1["log"], one["log"]
    assert single["scored_batches"] == BATCHES
    assert (first["scored_batches"], second["scored_batches"]) == (7, 6)  # ceil(13 / 2), rest
    assert first["omp_batches"] == second["omp_batches"] == single["omp_batches"] > 0


def test_ranks_iterate_disjoint_lockstep_shares_of_the_chosen_samples(ranks_and_reference):
    (r0, r1), one = ranks_and_reference
    whole = one["indices"][SUBSET_EPOCH]  # one process's epoch: the global order
    usable = len(whole) // WORLD * WORLD
    assert len(whole) - usable == 1  # 115 samples: the last is dropped
    for rank, r in enumerate((r0, r1)):
        assert r["lengths"][SUBSET_EPOCH] == len(r["indices"][SUBSET_EPOCH]) == usable // WORLD
        assert r["indices"][SUBSET_EPOCH] == whole[rank:usable:WORLD]
    union = set(r0["indices"][SUBSET_EPOCH]) | set(r1["indices"][SUBSET_EPOCH])
    assert len(union) == usable and union == set(whole[:usable])  # disjoint; the global subset


def test_a_full_data_epoch_is_the_full_baselines_on_each_rank(ranks_and_reference):
    (r0, r1), _ = ranks_and_reference
    for rank, r in enumerate((r0, r1)):
        full = soft_random_indices(N, 1.0, seed=5, epoch=0, num_replicas=WORLD, rank=rank)
        assert r["indices"][0] == full.tolist() and r["lengths"][0] == N // WORLD
    assert not set(r0["indices"][0]) & set(r1["indices"][0])


def test_skipped_epochs_are_empty_on_every_rank(ranks_and_reference):
    (r0, r1), one = ranks_and_reference
    assert r0["lengths"] == r1["lengths"] == [N // 2, 0, 0, BUDGET * BATCH // 2]
    assert one["lengths"] == [N, 0, 0, BUDGET * BATCH]


def test_a_rank_zero_state_loads_on_rank_one(ranks_and_reference):
    (r0, r1), _ = ranks_and_reference
    for r in (r0, r1):  # each resumes its own share where rank 0 had got to
        assert r["resumed"] == r["indices"][SUBSET_EPOCH][5:]
        assert r["resumed_weights"]


@given(batches=st.integers(1, 40), world=st.integers(1, 8))
def test_scoring_blocks_cover_the_batches_in_order(batches, world):
    blocks = [scoring_block(batches, num_replicas=world, rank=r) for r in range(world)]
    assert [b for block in blocks for b in block] == list(range(batches))
    assert max(len(block) for block in blocks) == -(-batches // world)  # the padded size


def test_a_rank_with_no_batches_contributes_an_empty_block():
    dataset, model = _task()
    assert batch_gradients(model, dataset, []).shape == (32 * 10 + 10, 0)
