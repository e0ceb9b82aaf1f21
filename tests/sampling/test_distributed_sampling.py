"""Epoch-level samplers under a process group of two gloo ranks: they shard by
themselves (disjoint shares whose union is the one-process global subset), they are
``DistributedSampler``s, rank 0's state resumes every rank, and InfoBatch prunes the
same global subset on every rank from every rank's losses."""

from __future__ import annotations

import warnings

import torch
from torch.utils.data import DistributedSampler

from sievetrain import distributed
from sievetrain.options import RunContext
from sievetrain.sampling import (
    FullOptions,
    InfoBatchSampler,
    RS2Sampler,
    SoftRandomSampler,
    rs2_indices,
    soft_random_indices,
)

N, EPOCHS = 100, (0, 1)
SRS_SAMPLE = dict(ratio=0.3, seed=3)  # m = 30: a multiple of 2 ranks, nothing dropped
SRS_ODD = dict(ratio=0.35, seed=4)  # m = 35: the ranks draw 34
SRS_BATCH = dict(ratio=0.5, seed=5, granularity="batch", batch_size=8)  # 55 or 56 samples
RS2 = dict(ratio=0.3, seed=6)  # m = 30
FULL_BUDGET, FULL_SEED = 0.3, 7  # full/budget=0.3: RS2 at ratio 0.3
INFOBATCH = dict(prune=0.5, epochs=4, seed=8)  # prunes epochs 0-3 (annealing from 4)


def _samplers() -> dict[str, DistributedSampler]:
    """The samplers under test, built as a run builds them: no num_replicas, no rank."""
    from sievetrain.bench import REGISTRY

    context = RunContext(n=N, batch_size=10, epochs=4, num_classes=10, seed=FULL_SEED)
    return {
        "srs": SoftRandomSampler(N, **SRS_SAMPLE),
        "srs_odd": SoftRandomSampler(N, **SRS_ODD),
        "srs_batch": SoftRandomSampler(N + 3, **SRS_BATCH),
        "rs2": RS2Sampler(N, **RS2),
        "full": REGISTRY["full"].build(FullOptions(budget=FULL_BUDGET), context),
    }


def _resumed_rest(sampler: SoftRandomSampler | RS2Sampler, make, epoch: int) -> tuple:
    """(this rank's share after 4 yielded, what a fresh sampler loading rank 0's state
    mid-epoch yields)."""
    sampler.set_epoch(epoch)
    iterator = iter(sampler)
    [next(iterator) for _ in range(4)]
    state = distributed.broadcast_object(sampler.state_dict())  # rank 0's, on every rank
    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(epoch)  # the resumed loop's usual call keeps the resume point
    return list(iterator), list(resumed), state["position"]


def _epoch_samplers(rank: int, world: int) -> dict:
    with warnings.catch_warnings(record=True) as caught:  # first: the warning is once a process
        warnings.simplefilter("always")
        single = SoftRandomSampler(N, **SRS_SAMPLE, num_replicas=1)
        RS2Sampler(N, **RS2, num_replicas=1)
        InfoBatchSampler(N, **INFOBATCH, num_replicas=1)
    warned = [w.category for w in caught]
    samplers = _samplers()
    shares = {}
    for name, sampler in samplers.items():
        for epoch in EPOCHS:
            sampler.set_epoch(epoch)
            shares[name, epoch] = (sampler.epoch_indices().tolist(), list(sampler))
    srs = samplers["srs"]
    attributes = (
        isinstance(srs, DistributedSampler),
        (srs.num_replicas, srs.rank, srs.seed, srs.shuffle, srs.drop_last),
        (srs.num_samples, srs.total_size, srs.epoch),
    )
    resumes = {
        "srs": _resumed_rest(srs, lambda: SoftRandomSampler(N, **SRS_SAMPLE), 1),
        "srs_batch": _resumed_rest(
            samplers["srs_batch"], lambda: SoftRandomSampler(N + 3, **SRS_BATCH), 2
        ),
        "rs2": _resumed_rest(samplers["rs2"], lambda: RS2Sampler(N, **RS2), 3),
    }
    single.set_epoch(0)
    return {
        "warned": warned,
        "single": (single.num_replicas, list(single)),
        "shares": shares,
        "attributes": attributes,
        "resumes": resumes,
    }


def _interleave(first: list[int], second: list[int]) -> list[int]:
    """The global order two ranks' shares ``rank::2`` come from."""
    assert len(first) == len(second)  # lockstep
    return [i for pair in zip(first, second, strict=True) for i in pair]


def _one_process(name: str, epoch: int) -> list[int]:
    """The global epoch one process samples (num_replicas=1, no process group)."""
    if name == "srs":
        return soft_random_indices(N, **SRS_SAMPLE, epoch=epoch).tolist()
    if name == "srs_odd":
        return soft_random_indices(N, **SRS_ODD, epoch=epoch).tolist()
    if name == "srs_batch":
        return soft_random_indices(N + 3, **SRS_BATCH, epoch=epoch).tolist()
    if name == "rs2":
        return rs2_indices(N, **RS2, epoch=epoch).tolist()
    return rs2_indices(N, FULL_BUDGET, seed=FULL_SEED, epoch=epoch).tolist()


def test_epoch_samplers_shard_by_the_process_group_and_resume_from_rank_0(ranks):
    r0, r1 = ranks(_epoch_samplers)
    for r in (r0, r1):
        assert r["warned"] == [distributed.SingleReplicaWarning]  # once, for three samplers
        assert r["single"] == (1, soft_random_indices(N, **SRS_SAMPLE, epoch=0).tolist())
    for name, epoch in r0["shares"]:
        (share0, yielded0), (share1, yielded1) = (
            r0["shares"][name, epoch],
            r1["shares"][name, epoch],
        )
        assert (yielded0, yielded1) == (share0, share1)
        assert not set(share0) & set(share1)  # disjoint
        one = _one_process(name, epoch)
        if name == "srs_odd":  # the ranks' 34 of m = 35: a subset, the order is another draw
            assert len(share0) + len(share1) == 34 and set(share0 + share1) < set(one)
        else:  # the one-process order, its odd tail (batch mode) dropped
            assert _interleave(share0, share1) == one[: len(one) // 2 * 2]
    for name in {name for name, _ in r0["shares"]}:  # a fresh subset every epoch
        assert set(r0["shares"][name, 0][0]) != set(r0["shares"][name, 1][0]), name
    for rank, r in enumerate((r0, r1)):
        assert r["attributes"] == (True, (2, rank, 3, True, True), (15, 30, 1))
        for name, (rest, resumed, position) in r["resumes"].items():
            assert position == 4 and rest == resumed, name  # rank 0's position, own share


def _losses(idx: torch.Tensor, epoch: int) -> torch.Tensor:
    """Training losses of ``idx (B,)`` in ``epoch``: a fixed function of (sample, epoch)."""
    return ((idx * 37 + epoch * 5) % 11).float() / 10


def _plan(sampler: InfoBatchSampler) -> tuple:
    weights = sampler.sample_weights(torch.arange(N))
    return sampler.epoch_indices().tolist(), None if weights is None else weights.tolist()


def _infobatch(rank: int, world: int) -> dict:
    sampler = InfoBatchSampler(N, **INFOBATCH)
    plans = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        plans.append(_plan(sampler))  # planned from every rank's losses: a collective
        if epoch < 2:
            for batch in sampler.epoch_indices().split(7):  # this rank's share only
                sampler.observe_losses(batch, _losses(batch, epoch))
    iterator = iter(sampler)  # epoch 2: a mid-epoch checkpoint
    taken = torch.tensor([next(iterator) for _ in range(5)])
    sampler.observe_losses(taken, _losses(taken, 2))
    state = distributed.broadcast_object(sampler.state_dict())  # every rank calls state_dict
    resumed = InfoBatchSampler(N, **INFOBATCH)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    rest, resumed_rest = list(iterator), list(resumed)
    for s in (sampler, resumed):
        s.observe_losses(torch.tensor(rest), _losses(torch.tensor(rest), 2))
        s.set_epoch(3)
    plans.append(_plan(sampler))
    return {
        "plans": plans,
        "resumed": (rest == resumed_rest, _plan(resumed)),
        "scores": sampler.scores.tolist(),
        "stats": sampler.stats(),
    }


def test_infobatch_ranks_prune_one_global_subset_from_every_ranks_losses(ranks):
    r0, r1 = ranks(_infobatch)
    reference = InfoBatchSampler(N, **INFOBATCH)  # one process fed every trained sample's loss
    global_sizes = []
    for epoch, ((share0, w0), (share1, w1)) in enumerate(
        zip(r0["plans"], r1["plans"], strict=True)
    ):
        reference.set_epoch(epoch)
        whole, weights = _plan(reference)
        global_sizes.append(len(whole))
        assert not set(share0) & set(share1)
        trained = _interleave(share0, share1)
        assert trained == whole[: len(whole) // 2 * 2]  # the same global plan, sharded
        assert w0 == w1 == weights
        if epoch < 3:
            reference.observe_losses(torch.tensor(trained), _losses(torch.tensor(trained), epoch))
    assert min(global_sizes) < N and any(k % 2 for k in global_sizes)  # pruned, a tail dropped
    for r in (r0, r1):
        assert r["scores"] == reference.scores.tolist() and r["stats"] == reference.stats()
    for r in (r0, r1):  # rank 0's mid-epoch state: the rest of the own share, the same next plan
        assert r["resumed"] == (True, r["plans"][3])
