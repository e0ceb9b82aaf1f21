"""Run a function on W gloo ranks (CPU processes) and collect each rank's result.

``run_ranks(fn, *args)`` starts W spawned processes, each in a process group of W
ranks (gloo, one torch thread), calls ``fn(rank, world, *args)`` and returns the W
results in rank order. With ``before=make``, each process first calls ``make(rank,
world)`` before its process group starts, and ``fn(rank, world, made, *args)`` gets what
it made (objects built before the group, as a module-level loader is). A rank that
raises fails the call with its traceback; ranks that do not finish within ``timeout``
seconds (a deadlock) are killed and fail it too. ``fn`` and its results must be
picklable: a module-level function of a test module.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["RankFailure", "run_ranks"]


class RankFailure(AssertionError):
    """A rank raised, or the ranks did not finish in time."""


def _entry(
    rank: int, world: int, store: str, fn: Callable, args: tuple, out: Any, before: Callable | None
) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        if before is not None:
            args = (before(rank, world), *args)
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=60),
        )
        try:
            # Pickled here: a tensor put on the queue as is would travel by a shared-memory
            # handle that dies with this process.
            out.put((rank, True, pickle.dumps(fn(rank, world, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException:
        out.put((rank, False, traceback.format_exc()))


def run_ranks(
    fn: Callable,
    *args: Any,
    world: int = 2,
    timeout: float = 120,
    before: Callable | None = None,
) -> list[Any]:
    """``[fn(0, world, *args), ..., fn(world - 1, world, *args)]``, each on its own rank
    (with ``before``: ``fn(rank, world, before(rank, world), *args)``, ``before`` called
    ahead of the process group)."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "store")
        processes = [
            context.Process(
                target=_entry, args=(r, world, store, fn, args, out, before), daemon=True
            )
            for r in range(world)
        ]
        for p in processes:
            p.start()
        results: dict[int, Any] = {}
        try:
            while len(results) < world:
                try:
                    rank, ok, value = out.get(timeout=timeout)
                except queue.Empty:
                    raise RankFailure(
                        f"ranks {sorted(set(range(world)) - set(results))} did not finish "
                        f"within {timeout} s (deadlock?)"
                    ) from None
                if not ok:
                    raise RankFailure(f"rank {rank} failed:\n{value}")
                results[rank] = pickle.loads(value)
        finally:
            for p in processes:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
    return [results[r] for r in range(world)]
