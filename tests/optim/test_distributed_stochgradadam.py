"""StochGradAdam under data parallelism: every rank draws the same masks (one
shared seed, one generator per device type), so DDP replicas stay bitwise equal,
also across a resume; a lone process follows ``torch.manual_seed``."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sievetrain import distributed
from sievetrain.optim import StochGradAdam


def _model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same initial weights on every rank
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _batches(rank: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(100 + rank)  # different data per rank
    return [
        (torch.randn(8, 6, generator=generator), torch.randint(3, (8,), generator=generator))
        for _ in range(steps)
    ]


def _train(model: nn.Module, optimizer: StochGradAdam, batches) -> None:
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _ddp_run(rank: int, seed: int | None) -> dict:
    torch.manual_seed(1000 + rank)  # unrelated global seeds: seed=None must not follow them
    model = nn.parallel.DistributedDataParallel(_model())
    optimizer = StochGradAdam(model.parameters(), lr=1e-2, sampling_rate=0.5, seed=seed)
    start, batches = _flat(model), _batches(rank, 20)
    _train(model, optimizer, batches[:1])
    # The masks drop entries: after one step from zero moments, exp_avg is 0 exactly
    # where the entry was masked.
    dropped = sum(int((optimizer.state[p]["exp_avg"] == 0).sum()) for p in model.parameters())
    _train(model, optimizer, batches[1:])
    return {
        "seed": optimizer.seed,
        "in_sync": distributed.in_sync(model),
        "params": _flat(model).numpy(),  # numpy: pickled by value, not shared memory
        "moved": not torch.equal(start, _flat(model)),
        "dropped": dropped,
    }


def _resume_run(rank: int) -> dict:
    batches = _batches(rank, 20)
    torch.manual_seed(7)
    model = nn.parallel.DistributedDataParallel(_model())
    optimizer = StochGradAdam(model.parameters(), lr=1e-2, sampling_rate=0.5)
    _train(model, optimizer, batches)
    straight = _flat(model)

    torch.manual_seed(7)  # the same shared seed as the uninterrupted run
    model = nn.parallel.DistributedDataParallel(_model())
    optimizer = StochGradAdam(model.parameters(), lr=1e-2, sampling_rate=0.5)
    _train(model, optimizer, batches[:10])
    buffer = io.BytesIO()
    if rank == 0:  # rank 0 writes the checkpoint; every rank reads it
        torch.save({"model": model.module.state_dict(), "optim": optimizer.state_dict()}, buffer)
    saved = torch.load(io.BytesIO(distributed.broadcast_object(buffer.getvalue())))

    torch.manual_seed(1000 + rank)  # another seed=None: the loaded seed must win
    model = nn.parallel.DistributedDataParallel(_model())
    optimizer = StochGradAdam(model.parameters(), lr=1e-2, sampling_rate=0.5)
    model.module.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optim"])
    _train(model, optimizer, batches[10:])
    return {
        "straight": straight.numpy(),
        "resumed": _flat(model).numpy(),
        "in_sync": distributed.in_sync(model),
    }


def _seed_per_rank(rank: int) -> bool:
    """The control: a different seed on each rank does break sync, so a rank drawing
    its own seed (as seed=None once did) would fail the tests below."""
    model = nn.parallel.DistributedDataParallel(_model())
    optimizer = StochGradAdam(model.parameters(), lr=1e-2, sampling_rate=0.5, seed=rank)
    _train(model, optimizer, _batches(rank, 3))
    return distributed.in_sync(model)


def _on_each_rank(rank, world):
    return {
        "shared": _ddp_run(rank, None),
        "given": _ddp_run(rank, 0),
        "resume": _resume_run(rank),
        "per_rank": _seed_per_rank(rank),
    }


@pytest.fixture(scope="module")
def ranked():
    """Every rank's results, from one start of two gloo ranks (each start costs seconds)."""
    from ranks import run_ranks

    return run_ranks(_on_each_rank)


@pytest.mark.parametrize(("run", "seed"), [("shared", None), ("given", 0)])
def test_ddp_replicas_stay_bitwise_equal(ranked, run, seed):
    r0, r1 = (r[run] for r in ranked)
    assert r0["seed"] == r1["seed"]  # each rank drawing its own seed is what broke sync
    if seed is not None:
        assert r0["seed"] == seed
    assert r0["in_sync"] and r1["in_sync"]
    assert np.array_equal(r0["params"], r1["params"]) and r0["moved"]
    assert r0["dropped"] > 0  # masks drop entries: different masks would desynchronise


def test_different_seeds_per_rank_would_be_caught(ranked):
    assert [r["per_rank"] for r in ranked] == [False, False]


def test_resume_on_two_ranks_is_bitwise_an_uninterrupted_run(ranked):
    r0, r1 = (r["resume"] for r in ranked)
    for r in (r0, r1):
        assert np.array_equal(r["resumed"], r["straight"]) and r["in_sync"]
    assert np.array_equal(r0["resumed"], r1["resumed"])
