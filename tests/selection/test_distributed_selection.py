"""Selectors under DistributedDataParallel, on two gloo ranks: they take the DDP
wrapper, keep every rank's step count equal (no deadlock), and hold the same state on
every rank, so rank 0's state_dict resumes every rank.

Each rank trains on its own random batches (different data, different losses); the
model starts alike on every rank (same seed; DDP broadcasts it anyway). Starting ranks
costs seconds, so the file starts them once (the ``results`` fixture runs every
scenario on the same two ranks) and each test checks one scenario's results.
"""

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from sievetrain.distributed import broadcast_object, in_sync
from sievetrain.losses import batch_loss
from sievetrain.models import MNIST1DCNN
from sievetrain.selection import SIFT, RandomKeep, SelectiveBackprop, keep_count
from sievetrain.selection.selective_backprop import expected_keep_fraction

BATCH = 32  # samples per rank and batch
SB_BATCHES = 10  # batches of the accumulating Selective Backprop run


def _ddp_model() -> DistributedDataParallel:
    torch.manual_seed(0)
    return DistributedDataParallel(MNIST1DCNN(num_classes=10, width=8))


def _batch(rank, step, size=BATCH):
    """Rank ``rank``'s batch ``step``: its own data, (size, 1, 40) and (size,)."""
    generator = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(size, 1, 40, generator=generator)
    return x, torch.randint(0, 10, (size,), generator=generator)


def _plain(state):
    """``state`` with tensors as lists: results cross the process boundary by pickle."""
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _train_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    batch_loss(model(x), y).backward()  # DDP all-reduces the gradients here
    optimizer.step()


# -- SIFT ---------------------------------------------------------------------------


def _sift(rank, world):
    model = _ddp_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    selector = SIFT(0.5, head="linear", num_classes=10, head_lr=1e-2)  # stage: model's own
    kept = []
    for step in range(3):
        x, y = _batch(rank, step)
        keep = selector.select(model, x, y)
        kept.append(len(keep))
        _train_step(model, optimizer, x[keep], y[keep])
    # Rank 0's state resumes every rank: the next selection matches the straight run.
    resumed = SIFT(0.5, head="linear", num_classes=10, head_lr=1e-2)
    resumed.load_state_dict(broadcast_object(selector.state_dict()))
    x, y = _batch(rank, 3)
    straight, again = selector.select(model, x, y), resumed.select(model, x, y)
    head = list(selector.exit.linear.parameters())
    reuse = SIFT(0.5, stage="stage2", head="reuse")  # the model's own head, found inside
    return {
        "kept": kept,
        "stage": selector.exit.stage,
        "steps": selector.steps,
        "samples_scored": selector.samples_scored,
        "resumed_equal": torch.equal(straight, again)
        and all(
            torch.equal(a, b) for a, b in zip(head, resumed.exit.linear.parameters(), strict=True)
        ),
        "head_moved": any(bool(p.any()) for p in head),
        "head_in_sync": in_sync(head),
        "model_in_sync": in_sync(list(model.parameters())),
        "reuse_kept": len(reuse.select(model, x, y)),
        "reuse_kind": reuse.exit.kind,
        "scores": selector.score(model, x, y).tolist(),
    }


def test_sift_takes_the_ddp_model_and_keeps_its_linear_heads_identical(results):
    r0, r1 = (r["sift"] for r in results)
    for r in (r0, r1):
        assert r["kept"] == [keep_count(BATCH, 0.5)] * 3 and r["stage"] == "stem"
        assert r["head_moved"] and r["head_in_sync"] and r["model_in_sync"]
        assert r["resumed_equal"]
        assert (r["reuse_kept"], r["reuse_kind"]) == (keep_count(BATCH, 0.5), "reuse")
    assert (r0["steps"], r0["samples_scored"]) == (r1["steps"], r1["samples_scored"]) == (4, 128)
    # The ranks scored different data: identical heads come from averaged gradients.
    assert r0["scores"] != r1["scores"]


# -- Selective Backprop and RandomKeep ------------------------------------------------


def _accumulating_run(rank, world, batches=SB_BATCHES):
    """A DDP loop that gathers Selective Backprop's kept samples into full batches, as
    the trainer does (remainder at the end); unequal counts would deadlock it."""
    model = _ddp_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    selector = SelectiveBackprop(3.0, history=200, full_epochs=0, seed=5)
    control = RandomKeep(0.3, seed=7)
    pending_x, pending_y = torch.empty(0, 1, 40), torch.empty(0, dtype=torch.long)
    kept, control_kept, steps = [], [], 0
    for step in range(batches):
        x, y = _batch(rank, step)
        keep = selector.select(model, x, y)
        kept.append(len(keep))
        control_kept.append(control.select(model, x, y).tolist())
        pending_x, pending_y = torch.cat([pending_x, x[keep]]), torch.cat([pending_y, y[keep]])
        while len(pending_y) >= BATCH:
            _train_step(model, optimizer, pending_x[:BATCH], pending_y[:BATCH])
            pending_x, pending_y = pending_x[BATCH:], pending_y[BATCH:]
            steps += 1
    if len(pending_y):
        _train_step(model, optimizer, pending_x, pending_y)
        steps += 1
    return {
        "kept": kept,
        "steps": steps,
        "state": _plain(selector.state_dict()),
        "control_kept": control_kept,
        "control_state": _plain(control.state_dict()),
        "model_in_sync": in_sync(list(model.parameters())),
    }


def test_selective_backprop_keeps_a_fixed_count_and_one_history_on_every_rank(results):
    r0, r1 = (r["accumulating"] for r in results)  # a deadlock would fail `results`
    batches = SB_BATCHES
    k = keep_count(BATCH, expected_keep_fraction(beta=3.0, min_prob=0.05))
    assert r0["kept"] == r1["kept"] == [k] * batches
    assert r0["steps"] == r1["steps"] == -(-batches * k // BATCH) and r0["model_in_sync"]
    s0, s1 = r0["state"], r1["state"]
    # The history holds both ranks' losses (different data), the last 200 of them.
    assert len(s0["recent_losses"]) == 200 and s0["recent_losses"] == s1["recent_losses"]
    assert s0["recent_losses"][-64:-32] != s0["recent_losses"][-32:]
    assert s0["generator"] == s1["generator"]
    assert s0["samples_scored"] == s1["samples_scored"] == batches * BATCH
    # RandomKeep with the DDP model: a fixed count, the same generator on every rank.
    assert r0["control_kept"] == r1["control_kept"]
    assert [len(c) for c in r0["control_kept"]] == [keep_count(BATCH, 0.3)] * batches
    assert r0["control_state"] == r1["control_state"]


def _unequal_batches(rank, world):
    selector = SelectiveBackprop(full_epochs=0)
    x, y = _batch(rank, 0, size=BATCH - 2 * rank)
    with pytest.raises(ValueError, match=r"same batch size on every rank, got \[32, 30\]"):
        selector.select(_ddp_model(), x, y)
    return True


def test_selective_backprop_refuses_unequal_batches_on_every_rank(results):
    assert [r["unequal"] for r in results] == [True, True]


# -- one start of the ranks for every scenario -----------------------------------------


def _scenarios(rank, world):
    return {
        "sift": _sift(rank, world),
        "accumulating": _accumulating_run(rank, world),
        "unequal": _unequal_batches(rank, world),
    }


@pytest.fixture(scope="module")
def results():
    """Every scenario's results on two gloo ranks, in rank order."""
    from ranks import run_ranks  # tests/ is on sys.path (see tests/conftest.py)

    return run_ranks(_scenarios, world=2)  # a deadlock fails (gloo times out at 60 s)
