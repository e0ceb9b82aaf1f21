"""The fused steps' counter-based mask stream (``fused.cpp`` draws it): the step keys, a
reference in numpy (:func:`keep_flags`, :func:`masks`, to replay and test a step),
and the same flags computed with torch ops on any device for entries named by their
index in the whole tensor (:func:`keep_flags_at`, :func:`shard_masks`: the masks of
shards, DTensors, where the fused kernel cannot step them).

Keying each entry by its index in the whole tensor, not in its shard, gives every
shard its own part of one stream: two ranks' shards never draw the same masks (as
they would if entry i of every shard were hashed alike), and a sharded run draws
exactly the masks of the unsharded fused run, whatever the number of ranks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from sievetrain.optim.shards import Piece

__all__ = [
    "MASK_BITS",
    "keep_flags",
    "keep_flags_at",
    "masks",
    "shard_masks",
    "step_keys",
    "tensor_key",
    "tensor_kept",
]

MASK_BITS = 16
_M64 = 2**64 - 1
_LOW = 0xFFFFFFFF
_TENSOR = 0xD1B54A32D192ED03  # as in fused.cpp


def _mix32(x: np.ndarray) -> np.ndarray:
    """fused.cpp's mix32 on uint32 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def tensor_key(key: int, j: int) -> int:
    """The 64-bit key of tensor ``j`` of a step keyed by ``key`` (as fused.cpp)."""
    return _mix64((key + (j + 1) * _TENSOR) & _M64)


def keep_flags(key: int, j: int, n: int, sampling_rate: float, offset: int = 0) -> np.ndarray:
    """Which of entries ``offset`` to ``offset + n - 1`` of tensor ``j`` the fused step
    keyed by ``key`` keeps (bool array): the kernel's stream, computed independently
    in numpy."""
    k = tensor_key(key, j)
    klo, khi = np.uint32(k & 0xFFFFFFFF), np.uint32(k >> 32)
    i = np.arange(offset, offset + n, dtype=np.int64)
    words = (8 * (i // 16) + i % 8).astype(np.uint32)
    with np.errstate(over="ignore"):
        bits = _mix32(_mix32(words + klo) ^ khi)
    lanes = (bits >> (16 * ((i // 8) % 2)).astype(np.uint32)) & np.uint32(0xFFFF)
    return lanes < round(sampling_rate * 2**MASK_BITS)


def tensor_kept(key: int, j: int, threshold: int) -> bool:
    """Mask "tensor": whether tensor ``j`` is kept, i.e. its stream's first entry,
    ``keep_flags(key, j, 1, s)[0]`` (with ``threshold = round(s * 2**16)``)."""
    k = tensor_key(key, j)
    bits = _mix32_int(_mix32_int(k & 0xFFFFFFFF) ^ (k >> 32))  # word 0, lane 0
    return (bits & 0xFFFF) < threshold


def masks(
    params: list[Tensor],
    key: int,
    sampling_rate: float,
    mask: str,
    offsets: list[int] | None = None,
) -> list[Tensor]:
    """The 0/1 masks, shaped like ``params`` and in their dtypes, that the fused step
    keyed by ``key`` applies to them (``mask`` "element" or "tensor"; ``offsets`` as
    :func:`sievetrain.optim.fused.stochgradadam_fused` takes them); for replaying a step with
    :func:`sievetrain.optim.functional.stochgradadam`."""
    out = []
    for j, p in enumerate(params):
        offset = 0 if offsets is None or mask == "tensor" else offsets[j]
        flags = keep_flags(key, j, 1 if mask == "tensor" else p.numel(), sampling_rate, offset)
        keep = torch.empty_like(p)  # p's layout: the flags are in memory order
        keep.as_strided((p.numel(),), (1,)).copy_(torch.from_numpy(flags).expand(p.numel()))
        out.append(keep)
    return out


def _mix64(z: int) -> int:
    """fused.cpp's mix64 (splitmix64's finaliser) on a Python int."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix32_int(x: int) -> int:
    """fused.cpp's mix32 on a Python int."""
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & 0xFFFFFFFF
    x = ((x ^ (x >> 15)) * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def step_keys(generator: torch.Generator, count: int = 1) -> list[int]:
    """``count`` 64-bit step keys (as non-negative ints) from ``generator``."""
    drawn = torch.randint(-(2**63), 2**63 - 1, (count,), generator=generator)
    return [int(k) & _M64 for k in drawn.tolist()]


def _mul32_torch(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in [0, 2**32), in halves of ``c`` so that
    no product leaves int64 (signed overflow is not defined)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _LOW


def _mix32_torch(x: Tensor) -> Tensor:
    """fused.cpp's mix32 on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32_torch(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32_torch(x, 0x846CA68B)
    return x ^ (x >> 16)


def keep_flags_at(key: int, j: int, index: Tensor, threshold: int) -> Tensor:
    """Whether tensor ``j`` of the step keyed by ``key`` keeps the entries whose indices
    in the whole tensor are ``index`` (int64; bool, shaped like it): the kernel's
    stream, with ``threshold = round(s * 2**16)``."""
    k = tensor_key(key, j)
    word = (index >> 4) * 8 + (index & 7)  # entry i: lane (i / 8) % 2 of word 8(i / 16) + i % 8
    bits = _mix32_torch(_mix32_torch((word + (k & _LOW)) & _LOW) ^ (k >> 32))
    lanes = (bits >> (16 * ((index >> 3) & 1))) & 0xFFFF
    return lanes < threshold


def shard_masks(
    params: list[Tensor], pieces: list[Piece | None], key: int, sampling_rate: float, mask: str
) -> list[Tensor]:
    """The 0/1 masks, shaped like ``params`` and in their dtypes, that the fused step keyed
    by ``key`` draws for them: a shard's at its entries' indices in the whole tensor
    (``pieces``), a plain tensor's (None) in memory order as the kernel walks it."""
    threshold = round(sampling_rate * 2**MASK_BITS)
    out = []
    for j, (p, piece) in enumerate(zip(params, pieces, strict=True)):
        keep = torch.empty_like(p)
        if mask == "tensor":  # one draw per tensor: its first entry's
            keep.fill_(float(tensor_kept(key, j, threshold)))
        elif piece is None or piece.start(p) is not None:
            start = 0 if piece is None else piece.start(p)
            index = torch.arange(start, start + p.numel(), device=p.device)
            keep.as_strided((p.numel(),), (1,)).copy_(keep_flags_at(key, j, index, threshold))
        else:  # a shard that is not one run of its tensor
            keep.copy_(keep_flags_at(key, j, piece.index(p), threshold))
        out.append(keep)
    return out
