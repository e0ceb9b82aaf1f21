"""Batches in the forms training loops hand around: ``(x, y, idx)`` tuples or lists,
or mappings of per-sample entries (a Hugging Face batch), with the operations the
step protocol (:class:`sievetrain.Sieve`) needs on any of them: keep some rows, join
batches, move them to a device, and a queue of kept samples waiting to fill a batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["Batch", "Waiting", "join_batches", "take_rows", "to_device"]

Batch = Any  # (x, y, idx) as a tuple or list, or a mapping of per-sample entries


def take_rows(batch: Batch, rows: Tensor, size: int) -> Batch:
    """``batch`` with only ``rows`` of each per-sample tensor (first dimension ``size``);
    tuples, lists and mappings keep their form, other entries stay as they are."""
    if isinstance(batch, Mapping):
        return {key: take_rows(value, rows, size) for key, value in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(take_rows(value, rows, size) for value in batch)
    if isinstance(batch, Tensor) and batch.dim() > 0 and len(batch) == size:
        return batch[rows.to(batch.device)]
    return batch


def join_batches(batches: list[Batch]) -> Batch:
    """The batches of one form, one after the other (tensors concatenated on the last
    one's device); an entry that is no tensor is the first batch's."""
    first = batches[0]
    if isinstance(first, Mapping):
        return {key: join_batches([b[key] for b in batches]) for key in first}
    if isinstance(first, tuple | list):
        return type(first)(join_batches(list(parts)) for parts in zip(*batches, strict=True))
    if isinstance(first, Tensor) and first.dim() > 0:
        device = batches[-1].device
        return torch.cat([b.to(device) for b in batches])
    return first


class Waiting:
    """Kept samples waiting to fill a batch: chunks of one batch form, in order."""

    def __init__(self) -> None:
        self.chunks: list[Batch] = []
        self.size = 0

    def add(self, batch: Batch, size: int) -> None:
        if size:
            self.chunks.append(batch)
            self.size += size

    def take(self, n: int) -> Batch:
        """The first ``n`` waiting samples, removed from the queue."""
        joined, total = join_batches(self.chunks), self.size
        rest = torch.arange(n, total)
        self.chunks = [take_rows(joined, rest, total)] if total > n else []
        self.size = total - n
        return take_rows(joined, torch.arange(n), total)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with its tensors on ``device``; the dataset indices stay where they are."""
    if isinstance(batch, Mapping):
        return {k: v if k == "idx" else _moved(v, device) for k, v in batch.items()}
    *head, idx = batch
    return type(batch)([*(_moved(v, device) for v in head), idx])


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: _moved(v, device) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_moved(v, device) for v in value)
    return value
