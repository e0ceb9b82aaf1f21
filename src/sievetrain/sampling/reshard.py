"""The guard against a sievetrain sampler sharded a second time.

Every sievetrain sampler gives each rank its own share of the epoch. A framework that
shards the batches drawn from it again trains each rank ``1/W`` of that share, half
the data on two ranks, and nothing says so: accelerate's ``prepare`` does this to a
loader (its ``BatchSamplerShard``, or its ``DataLoaderDispatcher``, which splits rank
0's batches), and so does a Hugging Face ``Trainer``, which prepares the loader its
``_get_train_sampler`` feeds. accelerate gives a sampler no hook to learn that it has
been wrapped, so :func:`check_not_sharded_again` looks at who asks it for its length or
its indices: the wrapper's own method is a few frames up.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["check_not_sharded_again"]

# accelerate's classes that shard a loader's batches over processes (accelerate 1.x).
_SHARDERS = {
    ("accelerate.data_loader", "BatchSamplerShard"),
    ("accelerate.data_loader", "DataLoaderDispatcher"),
}
_DEPTH = 12  # frames looked at: the sampler's caller's callers, up to the loader


def check_not_sharded_again(sampler: Any) -> None:
    """Raise ValueError if ``sampler``, which shards over ``num_replicas`` > 1 ranks
    itself, is read by one of accelerate's sharding wrappers; the message names the fix.

    Call it from the sampler's ``__len__`` and ``__iter__``: it looks at their callers.
    """
    if sampler.num_replicas == 1:
        return
    frame = sys._getframe(2)  # the caller of the sampler's method
    for _ in range(_DEPTH):
        if frame is None:
            return
        owner = frame.f_locals.get("self")
        if owner is not None and _shards(owner):
            raise ValueError(
                f"{type(sampler).__name__} already gives each of the {sampler.num_replicas} "
                f"ranks its own share of the epoch, and accelerate's {type(owner).__name__} "
                f"shards its batches again (each rank would train 1/{sampler.num_replicas} of "
                f"its share): build the training loader with "
                f"sievetrain.integrations.accelerate.prepare_loader(accelerator, dataset, "
                f"batch_size, sampler=...) instead of accelerator.prepare, and in a Hugging "
                f"Face Trainer use sievetrain.integrations.hf.SieveTrainer(sampler=...) "
                f"instead of overriding _get_train_sampler"
            )
        frame = frame.f_back


def _shards(owner: object) -> bool:
    """Whether ``owner`` is one of accelerate's sharding wrappers, not made a pass-through
    (a ``BatchSamplerShard`` set to one process, as transformers does for its own
    rank-aware sampler)."""
    kinds = {(cls.__module__, cls.__qualname__) for cls in type(owner).__mro__}
    return bool(kinds & _SHARDERS) and getattr(owner, "num_processes", None) != 1
