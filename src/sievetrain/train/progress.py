"""Two helpers of the training loop: the queue that gathers a selector's kept samples
into full batches, and the per-epoch progress bar."""

from __future__ import annotations

import torch

__all__ = ["PendingSamples", "ProgressBar"]


class PendingSamples:
    """Kept samples waiting to fill a full batch: ``(x, y, idx)`` chunks in order."""

    def __init__(self) -> None:
        self.chunks: list[tuple[torch.Tensor, ...]] = []

    def __len__(self) -> int:
        return sum(len(chunk[1]) for chunk in self.chunks)

    def add(self, *chunk: torch.Tensor) -> None:
        if len(chunk[1]):
            self.chunks.append(chunk)

    def take(self, n: int) -> tuple[torch.Tensor, ...]:
        """The first ``n`` pending samples, removed from the queue."""
        joined = [torch.cat(parts) for parts in zip(*self.chunks, strict=True)]
        self.chunks = [tuple(t[n:] for t in joined)] if len(joined[1]) > n else []
        return tuple(t[:n] for t in joined)


class ProgressBar:
    """A transient rich progress bar over one epoch's batches, or nothing."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self._progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=True,
                refresh_per_second=4,
            )
            self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)
