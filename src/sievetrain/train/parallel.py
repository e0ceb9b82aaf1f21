"""The Trainer across ranks: the model in ``DistributedDataParallel``, the test set
sharded, and a run's figures merged over ranks so that every rank holds the job's.

Under a process group of W ranks each rank trains on its share of every global batch
(``batch_size / W`` samples), DDP averages the gradients, and after every epoch the
epoch's counters are merged: samples and CPU seconds add up over ranks, wall seconds
are the slowest rank's, optimizer steps are the job's (equal on every rank), and the
coverage mask is the union. With one process every function here is the identity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sievetrain.distributed import all_reduce, broadcast_tensors, world
from sievetrain.sampling import CoverageTracker
from sievetrain.train.accounting import Accounting

__all__ = [
    "eval_shard",
    "local_batch_size",
    "mean_over_ranks",
    "merge_accounting",
    "merge_coverage",
    "snapshot",
    "sum_samples",
    "sync_buffers",
    "wrap_model",
]

# How each Accounting figure merges over ranks: the job's figure from the ranks' deltas.
_ADDED = ("samples_forwarded", "samples_backpropagated", "train_cpu_s")
_SLOWEST = ("train_time_s", "eval_time_s", "optimizer_steps")


def local_batch_size(batch_size: int) -> int:
    """This rank's share of the global ``batch_size``.

    Raises:
        ValueError: the world size does not divide ``batch_size``.
    """
    size = world()[0]
    if batch_size % size:
        raise ValueError(
            f"batch_size={batch_size} is the global batch and must be a multiple of the "
            f"{size} ranks"
        )
    return batch_size // size


def eval_shard(n: int) -> list[int] | None:
    """This rank's test indices (every W-th of ``n``), or None (all, in order) on one
    process; evaluation all-reduces the shards' sums."""
    size, rank = world()
    return None if size == 1 else list(range(rank, n, size))


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` under a process group of W > 1 ranks
    (unless it already is); ``model`` itself otherwise."""
    if world()[0] == 1 or isinstance(model, nn.parallel.DistributedDataParallel):
        return model
    if device.type != "cuda":
        return nn.parallel.DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return nn.parallel.DistributedDataParallel(model, device_ids=[index])


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch norm's running statistics), as DDP does
    before each forward pass: after an epoch's last step each rank holds its own, and
    evaluation and checkpoints must see one model."""
    broadcast_tensors(list(model.buffers()))


def snapshot(acct: Accounting) -> dict[str, float]:
    """The figures :func:`merge_accounting` later merges the change of."""
    figures = {name: float(getattr(acct, name)) for name in (*_ADDED, *_SLOWEST)}
    figures.update({f"time_s.{k}": v for k, v in acct.time_s.items()})
    figures.update({f"cpu_s.{k}": v for k, v in acct.cpu_s.items()})
    figures.update({f"device_s.{k}": v for k, v in acct.device_s.items()})
    return figures


def merge_accounting(acct: Accounting, since: dict[str, float]) -> None:
    """Replace each figure's change since ``since`` by the change over all ranks (the
    sum, or for wall times and steps the maximum); a no-op on one process."""
    if world()[0] == 1:
        return
    now = snapshot(acct)
    names = sorted(now)
    added = [n for n in names if n in _ADDED or n.startswith("cpu_s.")]
    slowest = [n for n in names if n not in added]
    for group, op in ((added, "sum"), (slowest, "max")):
        delta = torch.tensor([now[n] - since.get(n, 0.0) for n in group], dtype=torch.float64)
        merged = all_reduce(delta, op).tolist()
        for name, change in zip(group, merged, strict=True):
            _set(acct, name, since.get(name, 0.0) + change)


def _set(acct: Accounting, name: str, value: float) -> None:
    table, _, key = name.partition(".")
    if key:
        getattr(acct, table)[key] = value
    elif isinstance(getattr(acct, name), int):
        setattr(acct, name, round(value))
    else:
        setattr(acct, name, value)


def mean_over_ranks(total: torch.Tensor, count: int) -> float | None:
    """``total / count`` with both summed over ranks; None when no rank counted any."""
    if world()[0] > 1:
        both = torch.stack([total.double().cpu(), torch.tensor(count, dtype=torch.float64)])
        total, count = (summed := all_reduce(both))[0], int(summed[1])
    return total.item() / count if count else None


def merge_coverage(tracker: CoverageTracker) -> None:
    """Make the tracker's seen-mask the union over ranks; a no-op on one process."""
    if world()[0] == 1:
        return
    seen = tracker.state_dict()["seen"].to(torch.int32)
    tracker.load_state_dict({"seen": all_reduce(seen, "max").bool()})


def sum_samples(stats: dict[str, Any]) -> dict[str, Any]:
    """A selector's ``stats()`` with its sample counters (``samples_*``) summed over ranks."""
    keys = sorted(k for k, v in stats.items() if k.startswith("samples_") and isinstance(v, int))
    if world()[0] == 1 or not keys:
        return stats
    totals = all_reduce(torch.tensor([stats[k] for k in keys], dtype=torch.float64)).tolist()
    return {**stats, **{k: round(v) for k, v in zip(keys, totals, strict=True)}}
