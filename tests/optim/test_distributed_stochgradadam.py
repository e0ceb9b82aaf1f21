"""StochGradAdam under data parallelism: every rank draws the same masks (one
shared seed, taken at the first step, one generator per device type), so DDP
replicas stay bitwise equal, also across a resume, through ``torch.save`` or
``torch.distributed.checkpoint``, and with the optimizer built before the process
group; a lone process follows ``torch.manual_seed``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checkpoint_round_trip import through_checkpoint  # this folder is on the path
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
)

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


def _dcp_resume_run(rank: int, folder: str | None, **options) -> dict:
    """Ten steps, a checkpoint through get_state_dict (to ``folder`` with dcp when given,
    sharded state dicts; else full ones, in memory), a fresh model and optimizer,
    set_state_dict, ten more; and twenty steps straight."""
    options = StateDictOptions(full_state_dict=folder is None, **options)
    batches = _batches(rank, 20)

    def fresh(global_seed):
        torch.manual_seed(global_seed)  # seed=None: rank 0's, at the first step
        model = nn.parallel.DistributedDataParallel(_model())
        return model, StochGradAdam(model.parameters(), lr=1e-2, sampling_rate=0.5)

    model, optimizer = fresh(7)
    _train(model, optimizer, batches)
    straight = _flat(model)

    model, optimizer = fresh(7)
    _train(model, optimizer, batches[:10])
    # Another seed for the fresh ones: the loaded one must win.
    model, optimizer = through_checkpoint(
        model, optimizer, lambda: fresh(1000 + rank), options, folder
    )
    _train(model, optimizer, batches[10:])
    return {"straight": straight.numpy(), "resumed": _flat(model).numpy()}


def _seed_per_rank(rank: int) -> bool:
    """The control: a different seed on each rank does break sync, so a rank drawing
    its own seed (as seed=None once did) would fail the tests below."""
    model = nn.parallel.DistributedDataParallel(_model())
    optimizer = StochGradAdam(model.parameters(), lr=1e-2, sampling_rate=0.5, seed=rank)
    _train(model, optimizer, _batches(rank, 3))
    return distributed.in_sync(model)


def _on_each_rank(rank, world, folder):
    return {
        "shared": _ddp_run(rank, None),
        "given": _ddp_run(rank, 0),
        "resume": _resume_run(rank),
        "dcp sharded": _dcp_resume_run(rank, f"{folder}/sharded"),
        "dcp full": _dcp_resume_run(rank, None),
        "dcp flattened": _dcp_resume_run(
            rank, f"{folder}/flattened", flatten_optimizer_state_dict=True
        ),
        "per_rank": _seed_per_rank(rank),
    }


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    """Every rank's results, from one start of two gloo ranks (each start costs seconds)."""
    from ranks import run_ranks

    return run_ranks(_on_each_rank, str(tmp_path_factory.mktemp("dcp")))


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


@pytest.mark.parametrize("how", ["dcp sharded", "dcp full", "dcp flattened"])
def test_resume_through_distributed_checkpoint_is_bitwise_an_uninterrupted_run(ranked, how):
    """get_state_dict / set_state_dict keep an optimizer's state and param groups only:
    the mask stream travels in the first param group, so the resumed run is exact."""
    for r in ranked:
        assert np.array_equal(r[how]["resumed"], r[how]["straight"])
    assert np.array_equal(ranked[0][how]["resumed"], ranked[1][how]["resumed"])


RUN = Path(__file__).with_name("seed_before_group_run.py")


def test_seed_none_built_before_the_process_group_keeps_replicas_in_sync(tmp_path):
    """Built before init_process_group, each rank with its own global seed: the seed is
    rank 0's, taken at the first step, so the DDP replicas stay bitwise equal."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", str(RUN), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ran = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for path in ("fused", "unfused"):
        results = [r[path] for r in ranks]
        assert all(r["unresolved"] and r["in_sync"] for r in results), path
        assert results[0]["seed"] == results[1]["seed"], path
