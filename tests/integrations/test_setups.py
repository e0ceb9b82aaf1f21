"""Setups users write, under real ``torchrun`` (setups_run.py).

No silent double sharding: a sievetrain sampler already gives each rank its share, so
accelerate's ``prepare`` (and a Hugging Face ``Trainer`` fed the sampler through
``_get_train_sampler``) sharding its batches again is refused with the fix named,
instead of training half of each epoch. And a ``StochGradAdam(seed=None)`` built
before the process group keeps the replicas equal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import setups_run  # this folder is on pytest's path
import torch
from torch.utils.data import BatchSampler

from sievetrain.sampling import SoftRandomSampler
from sievetrain.sampling.base import shard
from sievetrain.sampling.reshard import check_not_sharded_again

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("setups")
    ran = subprocess.run(
        [*TORCHRUN, str(HERE / "setups_run.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _epoch() -> torch.Tensor:
    sampler = SoftRandomSampler(setups_run.N, setups_run.RATIO, seed=0, num_replicas=1, rank=0)
    return sampler.epoch_indices()


def _error(result: dict) -> str:
    assert "error" in result, f"trained {len(result['trained'])} samples of 12, silently"
    return result["error"]


def test_accelerate_prepare_of_a_sievetrain_sampler_is_refused_naming_prepare_loader(ranks):
    for result in ranks:
        error = _error(result["prepared"])
        assert "shards its batches again" in error and "prepare_loader" in error


def test_a_trainer_fed_the_sampler_by_get_train_sampler_is_refused_naming_sieve_trainer(ranks):
    for result in ranks:
        error = _error(result["hf_sampler"])
        assert "SieveTrainer" in error and "_get_train_sampler" in error


def test_stochgradadam_built_before_the_process_group_keeps_the_replicas_equal(ranks):
    first, second = (result["optimizer_first"]["trained"] for result in ranks)
    assert first == second  # rank 0's seed, taken at the first step
    torch.manual_seed(0)
    assert first != torch.cat([p.flatten() for p in setups_run.Linear().parameters()]).tolist()


def test_sievetrains_own_loaders_train_each_ranks_share_once(ranks):
    for way in ("prepare_loader", "sieve_trainer"):
        trained = [result[way]["trained"] for result in ranks]
        for rank, mine in enumerate(trained):
            assert mine == shard(_epoch(), 2, rank).tolist(), way
        assert sorted(trained[0] + trained[1]) == sorted(_epoch().tolist())  # all of it


def test_the_guard_lets_a_sampler_of_one_rank_and_a_pass_through_wrapper_be():
    class BatchSamplerShard:  # accelerate's name, made a pass-through as transformers does
        __module__, __qualname__ = "accelerate.data_loader", "BatchSamplerShard"

        def __init__(self, batch_sampler, num_processes):
            self.batch_sampler, self.num_processes = batch_sampler, num_processes

        def __iter__(self):
            yield from self.batch_sampler

    two = SoftRandomSampler(setups_run.N, 0.5, seed=0, num_replicas=2, rank=0)
    passthrough = BatchSamplerShard(BatchSampler(two, 4, drop_last=False), num_processes=1)
    assert sum(len(b) for b in passthrough) == 12
    sharding = BatchSamplerShard(BatchSampler(two, 4, drop_last=False), num_processes=2)
    with pytest.raises(ValueError, match="1/2 of its share.*prepare_loader"):
        list(sharding)
    one = SoftRandomSampler(setups_run.N, 0.5, seed=0, num_replicas=1, rank=0)
    assert sum(len(b) for b in BatchSamplerShard(BatchSampler(one, 4, False), 2)) == 24
    check_not_sharded_again(two)  # read directly: no wrapper in sight
