"""Sharded parameters (``DTensor``: FSDP2's ``fully_shard``, tensor parallelism) as
StochGradAdam steps them: each rank updates its local shard, and knows where that
shard's entries sit in the whole tensor, so that a mask keyed by an entry's index in
the whole tensor is the same however the tensor is split over ranks."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["PLAIN", "Piece", "dtensor_type", "is_plain", "is_sharded", "local"]

PLAIN = frozenset({Tensor, nn.Parameter})  # the types whose data_ptr() is their memory


def is_plain(t: Tensor) -> bool:
    """Whether ``t`` is a plain tensor (or parameter), not a subclass (DTensor, fake or
    functional tensors, ...) whose memory a kernel cannot read through ``data_ptr``."""
    return type(t) in PLAIN


def is_sharded(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor."""
    dtensor = dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


@functools.cache
def dtensor_type() -> type | None:
    """``torch.distributed.tensor.DTensor``; None where torch has no distributed."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


@dataclass(frozen=True)
class Piece:
    """Where a local shard sits in its whole tensor (row-major order)."""

    shape: tuple[int, ...]  # the whole tensor's shape
    offset: tuple[int, ...]  # the index of the shard's first entry along each dimension

    def start(self, shard: Tensor) -> int | None:
        """The whole tensor's flat index of ``shard``'s first entry, where its entries
        are one run of the whole tensor's (contiguous ``shard``, split on one leading
        dimension: FSDP2's ``Shard(0)``); None otherwise."""
        if not shard.is_contiguous():
            return None
        split = [d for d, (a, b) in enumerate(zip(shard.shape, self.shape, strict=True)) if a != b]
        # one run: the dimensions before the last split one hold one index each
        if split and any(shard.shape[d] != 1 for d in range(split[-1])):
            return None
        return sum(o * s for o, s in zip(self.offset, _strides(self.shape), strict=True))

    def index(self, shard: Tensor) -> Tensor:
        """The whole tensor's flat index of each entry of ``shard`` (int64, its shape)."""
        index = torch.zeros(shard.shape, dtype=torch.int64, device=shard.device)
        for d, (size, stride) in enumerate(zip(shard.shape, _strides(self.shape), strict=True)):
            along = torch.arange(self.offset[d], self.offset[d] + size, device=shard.device)
            index += (along * stride).view([-1 if e == d else 1 for e in range(shard.dim())])
        return index

    def as_real(self) -> Piece:
        """The piece of a complex shard's real view (a trailing dimension of 2)."""
        return Piece((*self.shape, 2), (*self.offset, 0))


def _strides(shape: tuple[int, ...]) -> list[int]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return strides[::-1]


def local(t: Tensor) -> tuple[Tensor, Piece | None]:
    """``t``'s local shard and where it sits, for a DTensor; ``(t, None)`` otherwise.

    Raises:
        ValueError: a DTensor placed other than by ``Shard`` and ``Replicate`` (a
            strided or partial placement), whose entries' positions are not a block.
    """
    if not is_sharded(t):
        return t, None
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    for placement in t.placements:
        # a strided shard's (FSDP2 with tensor parallelism) entries are not one block
        if type(placement) not in (Shard, Replicate):
            raise ValueError(
                f"invalid placements={t.placements!r}: StochGradAdam steps DTensors placed "
                "by Shard and Replicate (FSDP2, tensor parallelism)"
            )
    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return t.to_local(), Piece(tuple(t.shape), tuple(offset))
