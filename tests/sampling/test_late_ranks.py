"""Samplers that follow the process group take its ranks when their first epoch is
planned, not when they are built: a sampler made before ``init_process_group`` (a
module-level ``DataLoader``) shards by the group all the same, and one that planned for
another world size is refused with one clear line."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from sievetrain import distributed
from sievetrain.bench import REGISTRY
from sievetrain.options import RunContext
from sievetrain.sampling import (
    FullOptions,
    GradMatchSampler,
    InfoBatchSampler,
    RS2Sampler,
    SoftRandomSampler,
    soft_random_indices,
)
from sievetrain.sampling import base as sampling_base

N, EPOCHS = 100, (0, 1)


def _full(**ranks):
    """The ``full/budget=0.3`` baseline's sampler, as the bench builds it (no ranks given)."""
    context = RunContext(n=N, batch_size=10, epochs=4, num_classes=10, seed=7)
    if ranks:  # the one-process reference: RS2 at ratio 0.3, what the registry builds
        return RS2Sampler(N, 0.3, seed=7, **ranks)
    return REGISTRY["full"].build(FullOptions(budget=0.3), context)


# Each sampler as a run builds it (no ranks), or, given ranks, its one-process reference.
MAKERS = {
    "srs": lambda **ranks: SoftRandomSampler(N, 0.3, seed=3, **ranks),
    "srs_batch": lambda **ranks: SoftRandomSampler(
        N + 3, 0.5, seed=5, granularity="batch", batch_size=8, **ranks
    ),
    "rs2": lambda **ranks: RS2Sampler(N, 0.3, seed=6, **ranks),
    "full": _full,
    "infobatch": lambda **ranks: InfoBatchSampler(N, 0.5, epochs=4, seed=8, **ranks),
    "gradmatch": lambda **ranks: GradMatchSampler(
        N, 1.0, batch_size=10, epochs=2, seed=9, **ranks
    ),  # ratio 1: full data, no selection (no model needed)
}
# Fine for one process; too few samples for two ranks (checked when the ranks resolve).
TOO_SMALL = {
    "srs": (lambda: SoftRandomSampler(3, 0.34), "ratio 0.34: 1 samples < 2 ranks"),
    "rs2": (lambda: RS2Sampler(3, 0.34), "ratio 0.34: 1 samples < 2 ranks"),
    "infobatch": (lambda: InfoBatchSampler(1, epochs=2), "1 samples < 2 ranks"),
    "gradmatch": (
        lambda: GradMatchSampler(2, 0.5, batch_size=1, epochs=2),
        "ratio 0.5: 1 samples < 2 ranks",
    ),
}


def _refusal(call) -> str | None:
    try:
        call()
    except ValueError as error:
        return str(error)
    return None


def _built_before_the_group(rank: int, world: int) -> dict:
    """What a script builds at module level, before ``init_process_group``."""
    samplers = {name: make() for name, make in MAKERS.items()}
    early = SoftRandomSampler(N, 0.3, seed=3)
    len(early)  # plans epoch 0 for the one process there is: its ranks are fixed
    return {
        "samplers": samplers,
        "peeked": (samplers["srs"].num_replicas, samplers["srs"].rank),
        "copies": {  # a framework's copies (ddp_spawn pickles, loaders get copied)
            "deepcopy": copy.deepcopy(samplers["srs"]),
            "pickled": pickle.loads(pickle.dumps(samplers["srs"])),
        },
        "early": early,
        "too_small": {name: make() for name, (make, _) in TOO_SMALL.items()},
        "state_first": SoftRandomSampler(N, 0.3, seed=3),
        "load_first": SoftRandomSampler(N, 0.3, seed=3),
    }


def _in_the_group(rank: int, world: int, made: dict) -> dict:
    samplers = made["samplers"]
    peeked = {name: (s.num_replicas, s.rank) for name, s in samplers.items()}
    shares = {}
    for name, sampler in {**samplers, **made["copies"]}.items():
        for epoch in EPOCHS:
            sampler.set_epoch(epoch)
            shares[name, epoch] = list(sampler)
    early = made["early"]
    refused = {
        "set_epoch": _refusal(lambda: early.set_epoch(1)),
        "iter": _refusal(lambda: iter(early)),
        **{name: _refusal(lambda s=s: s.set_epoch(0)) for name, s in made["too_small"].items()},
    }
    saved = SoftRandomSampler(N, 0.3, seed=3)  # built in the group
    saved.set_epoch(1)
    iterator = iter(saved)
    [next(iterator) for _ in range(3)]
    state = distributed.broadcast_object(saved.state_dict())  # rank 0's
    loaded = made["load_first"]
    loaded.load_state_dict(state)  # its first call: resolves to the group's 2 ranks
    loaded.set_epoch(1)
    return {
        "before": made["peeked"],
        "peeked": peeked,
        "shares": shares,
        "refused": refused,
        "state_first": made["state_first"].state_dict()["config"]["num_replicas"],
        "resumed": (list(loaded), list(iterator)),
    }


def _one_process(name: str, epoch: int) -> list[int]:
    sampler = MAKERS[name](num_replicas=1, rank=0)
    sampler.set_epoch(epoch)
    return sampler.epoch_indices().tolist()


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    """Each rank's results: samplers built before the group, used in it (one spawn)."""
    from ranks import run_ranks  # tests/ is on sys.path: the conftest's folder

    return run_ranks(_in_the_group, before=_built_before_the_group)


def test_samplers_built_before_the_process_group_shard_by_it(two_ranks):
    results = two_ranks
    for rank, r in enumerate(results):
        assert r["before"] == (1, 0)  # read before the group: one process, nothing fixed
        assert all(peek == (2, rank) for peek in r["peeked"].values()), r["peeked"]
        assert r["state_first"] == 2  # a state saved first plans for the group too
        rest, expected = r["resumed"]
        assert rest == expected  # rank 0's state loaded first: this rank's own share
    r0, r1 = (r["shares"] for r in results)
    for name, epoch in r0:
        share0, share1 = r0[name, epoch], r1[name, epoch]
        assert len(share0) == len(share1) and not set(share0) & set(share1), (name, epoch)
        one = _one_process(name if name in MAKERS else "srs", epoch)
        interleaved = [i for pair in zip(share0, share1, strict=True) for i in pair]
        assert interleaved == one[: len(one) // 2 * 2], (name, epoch)  # the one global epoch


def test_a_sampler_planned_for_another_world_size_or_too_small_for_it_is_refused(two_ranks):
    refused = two_ranks[1]["refused"]
    expected = (
        "SoftRandomSampler planned its epochs for 1 process, but the process group now has "
        "2 ranks: build the sampler after the process group starts, or start the group "
        "before the sampler's first set_epoch, len, iter or state_dict"
    )
    assert refused["set_epoch"] == refused["iter"] == expected
    for name, (_, message) in TOO_SMALL.items():
        assert refused[name] == message, name  # the message of building it in the group


@pytest.fixture
def fake_group(monkeypatch):
    """``set(size, rank)``: what the process group reports, without starting one."""

    def set_world(size: int, rank: int) -> None:
        monkeypatch.setattr(distributed, "world", lambda: (size, rank))
        monkeypatch.setattr(sampling_base, "world", lambda: (size, rank), raising=False)

    return set_world


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_ranks_read_before_the_first_epoch_follow_the_group_and_fix_nothing(fake_group, name):
    sampler = MAKERS[name]()
    copies = [copy.deepcopy(sampler), pickle.loads(pickle.dumps(sampler))]
    assert (sampler.num_replicas, sampler.rank, sampler.total_size) == (1, 0, len(sampler))
    fake_group(2, 1)  # len() above planned for one process: this sampler is fixed now
    with pytest.raises(ValueError, match="planned its epochs for 1 process, but the process"):
        sampler.set_epoch(0)
    for unresolved in copies:  # copied before: still following the group
        assert (unresolved.num_replicas, unresolved.rank) == (2, 1)
        fake_group(4, 3)
        assert (unresolved.num_replicas, unresolved.rank) == (4, 3)  # reading fixes nothing
        unresolved.set_epoch(0)
        assert unresolved.config["num_replicas"] == 4 and unresolved.config["rank"] == 3
        fake_group(1, 0)  # the group is gone: its epochs were planned for 4
        with pytest.raises(ValueError, match="for 4 processes, but the process group now has 1 "):
            iter(unresolved)
        fake_group(2, 1)


HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _torchrun(mode: str, out: Path) -> list[dict]:
    """Each rank's record of late_ranks_run.py MODE (a loader built before the group)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(HERE / "late_ranks_run.py")
    ran = subprocess.run(
        [*TORCHRUN, script, mode, str(out)], capture_output=True, text=True, timeout=300, env=env
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    return [json.loads((out / f"{mode}-{r}.json").read_text()) for r in range(2)]


def _check_halves(records: list[dict]) -> None:
    """Each epoch the two ranks trained disjoint halves whose union is its subset, once."""
    import late_ranks_run as run  # this folder is on pytest's path

    for epoch in range(run.EPOCHS):
        subset = soft_random_indices(run.N, run.RATIO, seed=0, epoch=epoch).tolist()
        first, second = (r["trained"][str(epoch)] for r in records)
        assert len(first) == len(second) == len(subset) // 2, epoch
        assert not set(first) & set(second), epoch
        assert sorted(first + second) == sorted(subset), epoch


@pytest.mark.parametrize("mode", ["plain", "lightning", "accelerate"])
def test_a_loader_built_before_torchrun_starts_the_group_shards_by_it(tmp_path, mode):
    records = _torchrun(mode, tmp_path)
    _check_halves(records)
    if mode == "plain":  # the sampler whose len() ran before the group is refused, once
        assert all(
            r["refused"].startswith(
                "SoftRandomSampler planned its epochs for 1 process, "
                "but the process group now has 2 ranks"
            )
            for r in records
        )
