"""The batches an epoch trains on, after batch-level selection.

A selector decides, batch by batch, which samples get the forward and backward pass;
one that ``accumulates`` has its kept samples gathered into full batches first (the
remainder last). Loading is charged to the ``data`` phase and choosing to
``selection``, on the run's accounting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from sievetrain.selection.base import Selector
from sievetrain.train.accounting import Accounting

__all__ = ["PendingSamples", "selected_batches"]


class PendingSamples:
    """Kept samples waiting to fill a full batch: ``(x, y, idx)`` chunks in order."""

    def __init__(self) -> None:
        self.chunks: list[tuple[Tensor, ...]] = []

    def __len__(self) -> int:
        return sum(len(chunk[1]) for chunk in self.chunks)

    def add(self, *chunk: Tensor) -> None:
        if len(chunk[1]):
            self.chunks.append(chunk)

    def take(self, n: int) -> tuple[Tensor, ...]:
        """The first ``n`` pending samples, removed from the queue."""
        joined = [torch.cat(parts) for parts in zip(*self.chunks, strict=True)]
        self.chunks = [tuple(t[n:] for t in joined)] if len(joined[1]) > n else []
        return tuple(t[:n] for t in joined)


def selected_batches(
    loader: Iterable[tuple[Tensor, Tensor, Tensor]],
    selector: Selector,
    model: nn.Module,
    device: torch.device,
    acct: Accounting,
    *,
    batch_size: int,
    on_loaded: Callable[[], None] | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(x, y, idx)`` of each batch to train on, ``x`` and ``y`` on ``device``.

    Every loaded batch goes through ``selector.select(model, x, y)`` (on every rank in
    step, under a process group), then ``on_loaded()`` is called (a progress bar).
    Without accumulation each kept batch that is not empty is yielded as it comes; with
    it, batches of ``batch_size`` kept samples, and the remainder at the end.
    """
    pending = PendingSamples() if selector.accumulates else None
    batches = iter(loader)
    while True:
        with acct.phase("data"):
            batch = next(batches, None)
            if batch is None:
                break
            x, y, idx = batch
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
        with acct.phase("selection"):
            keep = selector.select(model, x, y)
            if keep is not None:
                x, y, idx = x[keep], y[keep], idx[keep.cpu()]
            if pending is not None:
                pending.add(x, y, idx)
        if on_loaded is not None:
            on_loaded()
        if pending is None:
            if len(y):
                yield x, y, idx
            continue
        while len(pending) >= batch_size:
            with acct.phase("selection"):
                batch = pending.take(batch_size)
            yield batch
    if pending is not None and len(pending):
        yield pending.take(len(pending))
