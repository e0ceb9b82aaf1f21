"""sievetrain's accelerate recipe: each rank trains its sampler's share of every epoch once,
a run stopped mid-epoch resumes bitwise, and selectors and StochGradAdam resume with it.

The training runs are ``accelerate_run.py`` (next to this file), started with ``python``
(one process) or ``torchrun`` (two gloo processes on the CPU, ``Accelerator(cpu=True)``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate_run import BATCH, EPOCHS, RATIO, STOP, N  # this folder is on pytest's path
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from sievetrain.data import IndexedDataset
from sievetrain.files import load_torch
from sievetrain.integrations import ResumableLoader
from sievetrain.integrations.accelerate import (
    prepare_loader,
    register_for_checkpointing,
)
from sievetrain.sampling import SoftRandomSampler
from sievetrain.sampling.base import shard
from sievetrain.selection import SIFT

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _launch(world: int, *args: str) -> str:
    """stdout of ``python`` (one process) or ``torchrun`` (two) running ``args``."""
    launcher = TORCHRUN if world == 2 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # now: with the session's private cache
    ran = subprocess.run(
        [*launcher, *args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    return ran.stdout


def _train(out: Path, world: int, sampler: str, *phases: str) -> dict[str, list[dict]]:
    """Each phase's per-rank records (see accelerate_run.py)."""
    _launch(world, str(HERE / "accelerate_run.py"), str(out), sampler, *phases)
    return {p: [load_torch(out / f"{p}-{r}.pt") for r in range(world)] for p in phases}


def _srs_epoch(epoch: int, world: int = 1, rank: int = 0) -> torch.Tensor:
    """Rank ``rank``'s indices of ``epoch`` from an SRS sampler of ``world`` ranks (with
    one rank: the whole epoch)."""
    sampler = SoftRandomSampler(N, RATIO, seed=0, num_replicas=world, rank=rank)
    sampler.set_epoch(epoch)
    return sampler.epoch_indices()


def _srs_shares(world: int):
    """``share(epoch, rank)`` of SRS samplers of ``world`` ranks."""
    return lambda epoch, rank: _srs_epoch(epoch, world, rank)


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


def _same(a: object, b: object) -> bool:
    """Nested dicts, lists and tensors equal, tensors bitwise."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _check_shares(ranks: list[dict], share, whole) -> None:
    """Each rank trained its sampler's share of every epoch, ``share(epoch, rank)``, once:
    the shares are disjoint and make up the whole epoch, ``whole(epoch)``, but for fewer
    than W samples (the tail that keeps ranks in lockstep)."""
    world = len(ranks)
    for epoch in range(EPOCHS):
        everything = set(whole(epoch).tolist())
        trained = [_flat(r["trained"][epoch]) for r in ranks]
        for rank, mine in enumerate(trained):
            assert mine == share(epoch, rank).tolist(), (epoch, rank)
            assert len(mine) == len(everything) // world  # sharded once: not len // W**2
        union = sum(trained, [])
        assert len(set(union)) == len(union) and set(union) <= everything  # no repeats
    firsts = {tuple(sorted(_flat(ranks[0]["trained"][e]))) for e in range(EPOCHS)}
    assert len(firsts) == EPOCHS  # a fresh subset every epoch


def _check_resume(full: dict, stop: dict, resume: dict) -> None:
    """The stopped and resumed run trained the uninterrupted run's batches, to its state."""
    epoch, batches = STOP
    assert list(resume["trained"]) == list(range(epoch, EPOCHS))
    for e in range(epoch):
        assert stop["trained"][e] == full["trained"][e]
    assert len(stop["trained"][epoch]) == batches
    assert stop["trained"][epoch] + resume["trained"][epoch] == full["trained"][epoch]
    for e in range(epoch + 1, EPOCHS):
        assert resume["trained"][e] == full["trained"][e]
    assert _same(resume["params"], full["params"])  # the resumed run started elsewhere
    assert not _same(stop["params"], full["params"])
    assert full["selector"]["steps"] == sum(map(len, full["trained"].values()))
    assert "linear" in full["selector"]["exit"]  # SIFT's trained exit head...
    assert _same(resume["selector"], full["selector"])  # ...its Adam and step counts
    assert _same(resume["optimizer"], full["optimizer"])  # StochGradAdam: moments, masks


def test_one_process_trains_each_epochs_subset_and_resumes_mid_epoch_bitwise(tmp_path):
    runs = _train(tmp_path, 1, "srs", "full", "stop")
    runs.update(_train(tmp_path, 1, "srs", "resume"))
    (full,), (stop,), (resume,) = runs["full"], runs["stop"], runs["resume"]
    _check_shares([full], _srs_shares(1), _srs_epoch)
    _check_resume(full, stop, resume)


def test_two_processes_each_train_their_share_once_and_stay_identical(tmp_path):
    ranks = _train(tmp_path, 2, "srs", "full")["full"]
    assert [r["world"] for r in ranks] == [2, 2]
    _check_shares(ranks, _srs_shares(2), _srs_epoch)
    for key in ("params", "selector", "optimizer"):
        assert _same(ranks[0][key], ranks[1][key]), key


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["srs", "infobatch"])
def test_two_processes_resume_mid_epoch_bitwise(tmp_path, sampler):
    runs = _train(tmp_path, 2, sampler, "full", "stop")
    runs.update(_train(tmp_path, 2, sampler, "resume"))
    for rank in range(2):
        _check_resume(*(runs[p][rank] for p in ("full", "stop", "resume")))
    if sampler == "infobatch":  # its plan of each epoch, the same on every rank
        plans = runs["full"][0]["plans"]
        assert _same(plans, runs["full"][1]["plans"])
        assert len(plans[0]) == N > len(plans[1])  # epoch 0 is full data, then it prunes
        _check_shares(runs["full"], lambda epoch, rank: shard(plans[epoch], 2, rank), plans.get)
    else:
        _check_shares(runs["full"], _srs_shares(2), _srs_epoch)


# In this process: one Accelerator at a time, accelerate's shared state reset around each.


@pytest.fixture
def make_accelerator():
    def reset() -> None:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    reset()
    yield lambda **kwargs: Accelerator(cpu=True, **kwargs)
    reset()


def _data(n: int = N) -> IndexedDataset:
    return IndexedDataset(TensorDataset(torch.randn(n, 3), torch.zeros(n, dtype=torch.long)))


def _indices(loader) -> list[int]:
    return [i for _, _, idx in loader for i in idx.tolist()]


def test_set_epoch_on_prepare_loaders_loader_selects_the_epoch_accelerate_prepare_would_not(
    make_accelerator,
):
    accelerator = make_accelerator()
    sampler = SoftRandomSampler(N, RATIO, seed=0)
    prepared = accelerator.prepare(DataLoader(_data(), BATCH, sampler=sampler))
    sampler.set_epoch(3)  # the trap: DataLoaderShard.__iter__ calls set_epoch(self.iteration)
    assert _indices(prepared) == _srs_epoch(0).tolist()

    loader = prepare_loader(accelerator, _data(), BATCH, sampler=SoftRandomSampler(N, RATIO))
    for epoch in (3, 4, 3):
        loader.set_epoch(epoch)
        assert _indices(loader) == _srs_epoch(epoch).tolist()
    assert _srs_epoch(3).tolist() != _srs_epoch(4).tolist()


def test_the_last_batch_ends_the_dataloader_so_accumulate_steps_there(make_accelerator):
    accelerator = make_accelerator(gradient_accumulation_steps=2)
    model = accelerator.prepare(nn.Linear(3, 2))

    def syncs(loader) -> list[tuple[bool, bool]]:
        seen = []
        for x, _, _ in loader:
            assert x.device == accelerator.device
            with accelerator.accumulate(model):
                seen.append(
                    (accelerator.sync_gradients, accelerator.gradient_state.end_of_dataloader)
                )
        assert not accelerator.gradient_state.in_dataloader
        return seen

    sampler = SoftRandomSampler(20, 0.5, seed=0)  # 10 samples an epoch: batches of 4, 4, 2
    loader = prepare_loader(accelerator, _data(20), 4, sampler=sampler)
    assert syncs(loader) == [(False, False), (True, False), (True, True)]
    loader.load_state_dict({**sampler.state_dict(), "position": 4})  # resumed after a batch
    assert syncs(loader) == [(False, False), (True, True)]
    loader = prepare_loader(accelerator, _data(20), 4, sampler=sampler, drop_last=True)
    loader.set_epoch(1)
    assert syncs(loader) == [(False, False), (True, True)]  # the batch of 2 is dropped
    # A loader accelerate does not know of: the epoch's last, odd batch does not step.
    plain = ResumableLoader(_data(20), 4, sampler=SoftRandomSampler(20, 0.5, seed=0))
    assert [sync for sync, _ in syncs(plain)] == [False, True, False]


def test_checkpoints_load_only_into_the_same_registered_objects(make_accelerator, tmp_path):
    first = make_accelerator()
    prepare_loader(first, _data(), BATCH, sampler=SoftRandomSampler(N, RATIO))
    first.save_state(str(tmp_path / "loader"))
    make_accelerator().save_state(str(tmp_path / "none"))  # nothing of sievetrain's registered

    second = make_accelerator()
    prepare_loader(second, _data(), BATCH, sampler=SoftRandomSampler(N, RATIO))
    register_for_checkpointing(second, SIFT(0.5, num_classes=2))
    with pytest.raises(ValueError, match="holds 1 states, but 2 objects are registered"):
        second.load_state(str(tmp_path / "loader"))
    with pytest.raises(FileNotFoundError, match="sievetrain_state.pt not found"):
        second.load_state(str(tmp_path / "none"))
    third = make_accelerator()
    loader = prepare_loader(third, _data(), BATCH, sampler=SoftRandomSampler(N, RATIO, seed=1))
    with pytest.raises(ValueError, match="state has seed=0, this sampler has 1"):
        third.load_state(str(tmp_path / "loader"))
    assert loader.sampler.epoch == 0


def test_bad_arguments_are_refused_naming_the_value(make_accelerator):
    accelerator = make_accelerator()
    elsewhere = SoftRandomSampler(N, RATIO, num_replicas=2, rank=1)  # built for another world
    with pytest.raises(ValueError, match="num_replicas=2, rank=1, but the accelerator runs 1"):
        prepare_loader(accelerator, _data(), BATCH, sampler=elsewhere)
    with pytest.raises(TypeError, match="sievetrain EpochSampler, got RandomSampler"):
        prepare_loader(accelerator, _data(), BATCH, sampler=RandomSampler(range(N)))
    with pytest.raises(TypeError, match="Parameter object has no state_dict"):
        register_for_checkpointing(accelerator, SIFT(0.5), nn.Linear(2, 2).weight)


@pytest.mark.slow  # like the other examples' runs: CI runs it after the default suite
def test_the_example_learns_in_one_process():
    out = _launch(1, "examples/accelerate_mnist1d.py", "--epochs", "10")
    accuracy, samples = re.search(
        r"test accuracy ([\d.]+), samples backpropagated (\d+)", out
    ).groups()
    assert float(accuracy) > 0.5  # chance: 0.1
    # SRS: 1200 of 4000 a epoch, in batches of 32; SIFT keeps ceil(b / 2) of each: 600.
    assert int(samples) == 10 * 600


@pytest.mark.slow
def test_the_example_under_torchrun_resumes_to_the_uninterrupted_runs_accuracy(tmp_path):
    script, folder = "examples/accelerate_mnist1d.py", str(tmp_path / "checkpoint")
    straight = _launch(2, script, "--epochs", "6")
    first = _launch(2, script, "--epochs", "2", "--checkpoint", folder)
    resumed = _launch(2, script, "--epochs", "6", "--checkpoint", folder, "--resume")
    assert straight.count("test accuracy") == 1  # the main process prints
    assert resumed.split(",")[0] == straight.split(",")[0]  # "test accuracy 0.xyz"
    assert first.split(",")[0] != straight.split(",")[0]
    assert straight.endswith(f"samples backpropagated {6 * 600}\n")  # as in one process
    assert resumed.endswith(f"samples backpropagated {6 * 600}\n")  # the sieve's count resumes
