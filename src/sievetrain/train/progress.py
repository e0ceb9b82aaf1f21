"""The training loop's per-epoch progress bar."""

from __future__ import annotations

__all__ = ["ProgressBar"]


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
