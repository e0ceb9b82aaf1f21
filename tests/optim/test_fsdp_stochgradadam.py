"""StochGradAdam under FSDP2 (``fully_shard``, two gloo ranks on the CPU): each rank
steps its shards; a shard's masks are its tensor's, keyed by each entry's index in
the whole tensor, so sharded training draws the masks of the unsharded (DDP) run;
at rate 1 it is Adam's step; its state is what torch.optim.Adam keeps under FSDP2;
and a checkpoint through torch.distributed.checkpoint resumes bitwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checkpoint_round_trip import through_checkpoint  # this folder is on the path
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Partial, Shard, distribute_tensor, init_device_mesh

from sievetrain.optim import StochGradAdam, fused

STEPS = 6  # optimizer steps of a run; a resumed run stops halfway


def _model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same initial weights on every rank
        # (3, 16) and (3,) split unevenly over two ranks: 2 rows and 1
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _wrapped(kind: str) -> nn.Module:
    model = _model()
    if kind == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def _optimizer(model: nn.Module, rate: float | None, **switches) -> torch.optim.Optimizer:
    if rate is None:
        return torch.optim.Adam(model.parameters(), lr=1e-2, **switches)
    return StochGradAdam(model.parameters(), lr=1e-2, sampling_rate=rate, **switches)


def _batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(100 + rank)  # different data per rank
    return [
        (torch.randn(8, 6, generator=generator), torch.randint(3, (8,), generator=generator))
        for _ in range(STEPS)
    ]


def _train(model, optimizer, batches) -> None:
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _full(model: nn.Module) -> np.ndarray:
    """Every parameter, whole (a collective under FSDP2), flattened into one array."""
    parts = [p.full_tensor() if isinstance(p, DTensor) else p for p in model.parameters()]
    return torch.cat([p.detach().flatten() for p in parts]).numpy()


def _run(rank: int, kind: str, rate: float | None, **switches) -> np.ndarray:
    """A run's parameters: Adam (rate None) or StochGradAdam (seed 0) on DDP or FSDP2."""
    model = _wrapped(kind)
    optimizer = _optimizer(model, rate, **switches, **({} if rate is None else {"seed": 0}))
    _train(model, optimizer, _batches(rank))
    return _full(model)


def _state_layout(optimizer, model) -> list[dict[str, tuple]]:
    return [
        {
            k: (type(v).__name__, getattr(v, "placements", None))
            for k, v in optimizer.state[p].items()
        }
        for p in model.parameters()
    ]


def _first_step_masks(rank: int) -> np.ndarray:
    """Where rank's shard of the first weight was used at the first step (from zero
    moments, exp_avg != 0 exactly there)."""
    model = _wrapped("fsdp")
    optimizer = _optimizer(model, 0.5, seed=0)
    _train(model, optimizer, _batches(rank)[:1])
    return (optimizer.state[model[0].weight]["exp_avg"].to_local() != 0).numpy()


def _resumed(rank: int, folder: str | None, **options) -> np.ndarray:
    """STEPS / 2 steps, a checkpoint through get_state_dict (to ``folder`` with dcp when
    given: sharded; else whole tensors in memory), a fresh model and optimizer (another
    seed=None: the loaded seed must win), set_state_dict, the other half."""
    options = StateDictOptions(full_state_dict=folder is None, **options)
    half = STEPS // 2
    torch.manual_seed(7)
    model = _wrapped("fsdp")
    optimizer = _optimizer(model, 0.5)
    _train(model, optimizer, _batches(rank)[:half])

    def fresh():
        torch.manual_seed(1000 + rank)
        model = _wrapped("fsdp")
        return model, _optimizer(model, 0.5)

    model, optimizer = through_checkpoint(model, optimizer, fresh, options, folder)
    _train(model, optimizer, _batches(rank)[half:])
    return _full(model)


def _straight(rank: int) -> np.ndarray:
    torch.manual_seed(7)  # seed=None: rank 0's seed, from torch.initial_seed()
    model = _wrapped("fsdp")
    _train(model, _optimizer(model, 0.5), _batches(rank))
    return _full(model)


def _fused_kernel_refuses_dtensors(rank: int) -> dict:
    """The kernel handed DTensors themselves (not their shards) must refuse them,
    changing nothing; ``supports`` takes them, as their shards go to the kernel."""
    model = _wrapped("fsdp")
    optimizer = _optimizer(model, 0.5, seed=0)
    _train(model, optimizer, _batches(rank)[:1])  # gradients, and DTensor moments
    params = list(model.parameters())
    states = [optimizer.state[p] for p in params]
    before = [t.to_local().clone() for s in states for t in (s["exp_avg"], s["exp_avg_sq"])]
    before += [p.to_local().clone() for p in params]
    took = fused.stochgradadam_fused(
        params, [p.grad for p in params], [s["exp_avg"] for s in states],
        [s["exp_avg_sq"] for s in states], None, [s["step"] for s in states],
        library=fused.kernel(), key=1, sampling_rate=0.5, mask="element", lr=1e-2, beta1=0.9,
        beta2=0.999, eps=1e-8, weight_decay=0.0, masked_state="decay", scale=1.0, maximize=False,
    )  # fmt: skip
    after = [t.to_local() for s in states for t in (s["exp_avg"], s["exp_avg_sq"])]
    after += [p.to_local() for p in params]
    return {
        "took": took,
        "unchanged": all(torch.equal(a, b) for a, b in zip(after, before, strict=True)),
        "steps": [float(s["step"]) for s in states],
        "supports": fused.supports(params),
    }


def _column_shards(rank: int) -> dict:
    """A parameter split by columns (Shard(1): a shard is not one run of its tensor):
    fused=True is refused; the default steps it with the whole tensor's fused masks."""
    mesh = init_device_mesh("cpu", (2,))
    generator = torch.Generator().manual_seed(3)
    whole, grads = torch.randn(5, 8, generator=generator), torch.randn(2, 5, 8, generator=generator)
    p = nn.Parameter(distribute_tensor(whole, mesh, [Shard(1)]))
    try:
        StochGradAdam([p], fused=True)
        refused = ""
    except ValueError as error:
        refused = str(error)
    q = nn.Parameter(whole.clone())
    ours, reference = (
        StochGradAdam([p], sampling_rate=0.5, seed=4),
        StochGradAdam([q], sampling_rate=0.5, seed=4, fused=True),
    )
    for g in grads:
        p.grad, q.grad = distribute_tensor(g, mesh, [Shard(1)]), g.clone()
        ours.step()
        reference.step()
    partial = nn.Parameter(DTensor.from_local(torch.ones(2), mesh, [Partial()]))
    partial.grad = DTensor.from_local(torch.ones(2), mesh, [Partial()])
    try:
        StochGradAdam([partial], sampling_rate=0.5, seed=0).step()
        partial_refused = ""
    except ValueError as error:
        partial_refused = str(error)
    return {
        "refused": refused,
        "sharded": p.full_tensor().detach().numpy(),
        "whole": q.detach().numpy(),
        "start": whole.numpy(),
        "partial_refused": partial_refused,
    }


def _on_each_rank(rank: int, world: int, folder: str) -> dict:
    torch.manual_seed(1000 + rank)  # unrelated global seeds on the ranks
    adam_model = _wrapped("fsdp")
    adam = _optimizer(adam_model, None)
    ours_model = _wrapped("fsdp")
    ours = _optimizer(ours_model, 1.0, seed=0)
    _train(adam_model, adam, _batches(rank)[:1])
    _train(ours_model, ours, _batches(rank)[:1])
    return {
        "rate 1": {
            "adam fsdp": _run(rank, "fsdp", None),
            "ours fsdp": _run(rank, "fsdp", 1.0),
            "ours ddp": _run(rank, "ddp", 1.0),
        },
        "rate 0.5": {
            "ddp": _run(rank, "ddp", 0.5),
            "fsdp": _run(rank, "fsdp", 0.5),
            "fsdp fused=True": _run(rank, "fsdp", 0.5, fused=True),
            "fsdp fused=False": _run(rank, "fsdp", 0.5, fused=False),
            "fsdp foreach=False": _run(rank, "fsdp", 0.5, fused=False, foreach=False),
        },
        "layouts": (_state_layout(adam, adam_model), _state_layout(ours, ours_model)),
        "first masks": _first_step_masks(rank),
        "straight": _straight(rank),
        "resumed sharded": _resumed(rank, f"{folder}/sharded"),
        "resumed full": _resumed(rank, None),
        # as torchtitan saves: one flat dict of keys
        "resumed flattened": _resumed(
            rank, f"{folder}/flattened", flatten_optimizer_state_dict=True
        ),
        "kernel": _fused_kernel_refuses_dtensors(rank),
        "columns": _column_shards(rank),
        "start": _full(_wrapped("fsdp")),
    }


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    """Every rank's results, from one start of two gloo ranks (each start costs seconds)."""
    from ranks import run_ranks

    return run_ranks(_on_each_rank, str(tmp_path_factory.mktemp("dcp")))


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal to float32 round-off: DDP all-reduces gradients, FSDP2 reduce-scatters them."""
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_rate_one_under_fsdp2_is_adams_step_and_trains_as_ddp(ranked):
    for r in ranked:
        runs = r["rate 1"]
        assert np.array_equal(runs["ours fsdp"], runs["adam fsdp"])  # torch's Adam, sharded
        _close(runs["ours fsdp"], runs["ours ddp"])
        assert not np.array_equal(runs["ours fsdp"], r["start"])


def test_fsdp2_shards_draw_their_tensors_masks_so_it_trains_as_ddp(ranked):
    """Keyed by each entry's index in the whole tensor, every path's masks are the
    unsharded fused run's (DDP's default on the CPU), so only round-off separates them."""
    for r in ranked:
        runs = r["rate 0.5"]
        for path in ("fsdp", "fsdp fused=True", "fsdp fused=False", "fsdp foreach=False"):
            _close(runs[path], runs["ddp"])
        assert np.array_equal(runs["fsdp fused=True"], runs["fsdp"])  # the default is fused
        assert np.array_equal(runs["fsdp fused=False"], runs["fsdp foreach=False"])
        # masks matter: different masks (rate 1, none) land far from these
        assert np.abs(runs["ddp"] - r["rate 1"]["ours ddp"]).max() > 1e-3
    assert np.array_equal(ranked[0]["rate 0.5"]["fsdp"], ranked[1]["rate 0.5"]["fsdp"])


def test_two_ranks_shards_of_a_tensor_draw_different_masks(ranked):
    first, second = (r["first masks"] for r in ranked)
    assert first.shape == second.shape == (8, 6)  # rows 0-7 and 8-15 of a (16, 6) weight
    assert not np.array_equal(first, second)  # entry i of each shard is not hashed alike
    assert 0 < first.mean() < 1 and 0 < second.mean() < 1


def test_the_state_is_what_adam_keeps_under_fsdp2(ranked):
    """DTensor moments placed as their parameters, a plain step count: what FSDP2 and
    torch.distributed.checkpoint expect, as they find it in torch.optim.Adam."""
    for r in ranked:
        adam, ours = r["layouts"]
        assert ours == adam
        assert ours[0]["exp_avg"] == ("DTensor", (Shard(0),))


@pytest.mark.parametrize("how", ["sharded", "full", "flattened"])
def test_resume_through_distributed_checkpoint_is_bitwise_the_uninterrupted_run(ranked, how):
    """get_state_dict (sharded, also flattened: to disk with dcp.save, back with
    dcp.load; full: whole tensors in memory), a fresh model and optimizer,
    set_state_dict: the mask stream travels in the first param group, so the run ends
    bitwise where the straight one does."""
    for r in ranked:
        assert np.array_equal(r[f"resumed {how}"], r["straight"])
    assert np.array_equal(ranked[0]["straight"], ranked[1]["straight"])


def test_the_fused_kernel_never_takes_a_dtensor(ranked):
    for r in ranked:
        kernel = r["kernel"]
        assert kernel["took"] is False and kernel["unchanged"]
        assert kernel["steps"] == [1.0] * 4  # counted once, by the optimizer's own step
        assert kernel["supports"]  # through their shards, which is how the optimizer goes


def test_shards_that_are_not_one_run_step_with_the_whole_tensors_masks(ranked):
    for r in ranked:
        columns = r["columns"]
        assert "invalid fused=True" in columns["refused"] and "DTensor" in columns["refused"]
        np.testing.assert_allclose(columns["sharded"], columns["whole"], rtol=1e-6, atol=1e-7)
        assert not np.array_equal(columns["sharded"], columns["start"])
        assert "invalid placements=(Partial(sum),)" in columns["partial_refused"]
