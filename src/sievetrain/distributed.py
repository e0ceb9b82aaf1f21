"""Data-parallel training: what every piece needs from the process group.

sievetrain follows ``torch.distributed``: when a process group is initialized (by
``torchrun`` and ``init_process_group``, or by a framework), samplers shard by rank,
StochGradAdam shares one seed, selectors keep every rank in step, and the Trainer
wraps the model in ``DistributedDataParallel``. Without one, every helper here is the
identity and nothing communicates: single-process runs are unchanged.

Collectives run on the backend's device (the current CUDA device under NCCL, the
CPU under gloo) and hand results back on the input's device.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sievetrain.options import as_int
from sievetrain.rng import derive_seed

__all__ = [
    "SingleReplicaWarning",
    "all_gather",
    "all_reduce",
    "average_gradients",
    "broadcast_object",
    "broadcast_tensors",
    "gather_objects",
    "in_sync",
    "init_from_environment",
    "is_main",
    "replicas",
    "shared_seed",
    "unwrap",
    "world",
]

ReduceOp = Literal["sum", "max", "min"]
_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


class SingleReplicaWarning(UserWarning):
    """A sampler told ``num_replicas=1`` in a world of several ranks: every rank will
    see the same indices. Frameworks that shard batches themselves can filter it:
    ``warnings.filterwarnings("ignore", category=SingleReplicaWarning)``."""


_warned_single_replica = False


def world() -> tuple[int, int]:
    """``(world_size, rank)`` of the default process group; ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes and prints)."""
    return world()[1] == 0


def replicas(
    num_replicas: int | None = None, rank: int | None = None, *, stacklevel: int = 2
) -> tuple[int, int]:
    """A sampler's ``(num_replicas, rank)``: each defaults from the process group as it is
    now. (Samplers call this when their first epoch is planned, unless ``num_replicas`` is
    given: see :class:`~sievetrain.sampling.EpochSampler`.)

    ``num_replicas=1`` given explicitly in a world of W > 1 ranks warns once per process
    (:class:`SingleReplicaWarning`): every rank would then train the same indices. The
    warning names the line ``stacklevel`` frames up from the caller of this function, as
    ``warnings.warn`` counts (2: the caller's caller).

    Raises:
        ValueError: ``num_replicas < 1`` or ``rank`` outside ``[0, num_replicas)``.
    """
    global _warned_single_replica
    size, me = world()
    if num_replicas is not None and as_int("num_replicas", num_replicas, 1) == 1 and size > 1:
        if not _warned_single_replica:
            _warned_single_replica = True
            warnings.warn(
                f"num_replicas=1 in a process group of {size} ranks: every rank gets the same "
                f"indices (leave num_replicas=None to shard by rank)",
                SingleReplicaWarning,
                stacklevel=stacklevel + 1,
            )
    num_replicas = size if num_replicas is None else as_int("num_replicas", num_replicas, 1)
    rank = (me if num_replicas == size else 0) if rank is None else rank
    return num_replicas, as_int("rank", rank, 0, num_replicas)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper;
    ``model`` itself otherwise. Scoring passes go through it: no DDP collectives."""
    parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, parallel):
        model = model.module
    return model


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(tensor: Tensor, op: ReduceOp = "sum") -> Tensor:
    """``tensor`` reduced over all ranks (a new tensor; ``tensor`` itself is unchanged)."""
    if world()[0] == 1:
        return tensor.clone()
    work = tensor.detach().to(_device(), copy=True)
    dist.all_reduce(work, op=getattr(dist.ReduceOp, _OPS[op]))
    return work.to(tensor.device)


def all_gather(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` (same shape on every rank), concatenated along dim 0 in
    rank order."""
    size = world()[0]
    if size == 1:
        return tensor.clone()
    work = tensor.detach().to(_device()).contiguous()
    parts = [torch.empty_like(work) for _ in range(size)]
    dist.all_gather(parts, work)
    return torch.cat(parts).to(tensor.device)


def broadcast_tensors(tensors: list[Tensor], src: int = 0) -> None:
    """Overwrite each of ``tensors`` with rank ``src``'s, in place (a no-op on one process)."""
    if world()[0] == 1:
        return
    for t in tensors:
        work = t.detach().to(_device())
        dist.broadcast(work, src=src)
        t.detach().copy_(work)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled in memory; nothing read from disk)."""
    if world()[0] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_device())
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (pickled in memory); ``[obj]`` on one process."""
    size = world()[0]
    if size == 1:
        return [obj]
    box: list[Any] = [None] * size
    dist.all_gather_object(box, obj)
    return box


def shared_seed(seed: int | None, purpose: str) -> int:
    """``seed``, or when None one seed shared by every rank: rank 0's, derived from
    ``torch.initial_seed()`` (so ``torch.manual_seed`` makes runs reproducible) and
    broadcast."""
    if seed is not None:
        return as_int("seed", seed)
    return broadcast_object(derive_seed(torch.initial_seed(), purpose))


def average_gradients(parameters: list[Tensor]) -> None:
    """Replace each gradient by its mean over ranks, in place (a no-op on one rank);
    for parameters outside DDP that must stay identical on every rank."""
    size = world()[0]
    grads = [p.grad for p in parameters if p.grad is not None]
    if size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat = all_reduce(flat) / size
    for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(part.view_as(g))


def in_sync(tensors: nn.Module | list[Tensor]) -> bool:
    """Whether ``tensors`` (a module's parameters and buffers, or a list) are bitwise
    equal on every rank: one all-reduced 63-bit checksum of their bytes."""
    if isinstance(tensors, nn.Module):
        tensors = [*tensors.parameters(), *tensors.buffers()]
    digest = hashlib.blake2b(digest_size=8)
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    value = int.from_bytes(digest.digest(), "little") >> 1
    bounds = all_reduce(torch.tensor([value, -value], dtype=torch.int64), "max")
    return int(bounds[0]) == -int(bounds[1])


def init_from_environment(device: str, *, timeout_s: float = 600) -> str:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the
    environment), once: NCCL on CUDA, gloo otherwise. Returns the device this rank
    trains on: ``cuda:LOCAL_RANK`` where ``device`` is ``cuda``, ``device`` otherwise.
    Without torchrun (or with one process) nothing happens and ``device`` is returned.

    Raises:
        ValueError: ``device`` names a CUDA index under torchrun, or this rank's
            ``LOCAL_RANK`` has no GPU.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.device(device).index is not None:
            raise ValueError(
                f"--device {device!r} under torchrun: say cuda, each rank takes its own"
            )
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s)")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if kind == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s)
        )
    return device
