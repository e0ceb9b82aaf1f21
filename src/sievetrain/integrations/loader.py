"""A ``DataLoader`` a framework can checkpoint mid-epoch: its state is its sampler's.

Frameworks save what has ``state_dict``/``load_state_dict`` (Lightning's stateful
loaders, accelerate's ``register_for_checkpointing``). A sievetrain sampler already
holds its epoch and position, but a loader pulls indices ahead of training (its
workers, a framework's one-batch look-ahead), so the sampler's own position runs
ahead of what was trained. This loader counts the batches it has handed out instead,
and a framework that looks ahead tells it how many its loop has trained
(``batches_done``). A framework whose step runs a :class:`~sievetrain.Sieve` binds it
(``loader.sieve``): the position is then the samples the sieve consumed, and where the
sieve gathers kept samples into full batches, each pass ends with one empty batch, the
step at which the sieve trains what is still waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset

from sievetrain.options import as_int
from sievetrain.sampling.base import EpochSampler
from sievetrain.sieve import Sieve

__all__ = ["ResumableLoader"]


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a sievetrain sampler whose ``state_dict`` is the sampler's,
    with the position at the batches trained.

    Args:
        dataset: any map-style dataset (wrap it in
            :class:`~sievetrain.data.IndexedDataset` to get each sample's index in
            the batch, which InfoBatch and coverage need).
        batch_size: samples per batch on this rank.
        sampler: an :class:`~sievetrain.sampling.EpochSampler`; it shards by rank itself.
        **kwargs: the other ``DataLoader`` arguments (``num_workers``, ``collate_fn``,
            ``drop_last``, ...); not ``shuffle`` or ``batch_sampler``.

    ``set_epoch(epoch)`` forwards to the sampler. ``state_dict()`` is the sampler's with
    ``position`` = the samples of the batches handed out this epoch (or, once set,
    ``batches_done`` of them, counted from the epoch's start; or, with a bound
    :attr:`sieve`, the samples it consumed); rank 0's loads on every rank. Before this
    epoch's first batch it is the sampler's own state.

    Attributes:
        sieve: a :class:`~sievetrain.Sieve` over this loader's sampler whose ``select``
            the framework's step calls, or None. Bound, it gives the position; if it
            gathers, every pass ends with an empty batch of the last one's form (one
            more in ``len``), whose ``select`` trains the waiting samples.
    """

    def __init__(
        self, dataset: Dataset, batch_size: int = 1, *, sampler: EpochSampler, **kwargs: Any
    ) -> None:
        if not isinstance(sampler, EpochSampler):
            raise TypeError(
                f"sampler must be a sievetrain EpochSampler, got {type(sampler).__name__}"
            )
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._epoch: int | None = None  # the epoch the current iteration runs
        self._start = 0  # the sampler position it began at
        self._handed = 0  # batches it has handed out
        self.batches_done: int | None = None  # set by a framework that looks ahead
        self.sieve: Sieve | None = None

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return super().__len__() + (self.sieve is not None and self.sieve.accumulates)

    def __iter__(self) -> Iterator[Any]:
        self._epoch, self._start = self.sampler.epoch, self.sampler.next_start
        self._handed, self.batches_done = 0, None
        last = None
        for last in super().__iter__():
            self._handed += 1
            yield last
        if self.sieve is not None and (end := self.sieve.empty_batch(last)) is not None:
            yield end  # the sieve's select trains what is still waiting

    @property
    def position(self) -> int:
        """Samples of this rank trained in the sampler's current epoch."""
        sampler = self.sampler
        if self.sieve is not None and self.sieve.sampler is sampler:
            return self.sieve.position
        if self._epoch != sampler.epoch or sampler.next_start:  # not iterating this epoch
            return sampler.position
        if self.batches_done is not None:
            done = self.batches_done * self.batch_size
        else:
            done = self._start + self._handed * self.batch_size
        return min(done, len(sampler))

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state with ``position`` at the batches trained (a collective
        where the sampler's is: call it on every rank)."""
        return {**self.sampler.state_dict(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a sampler state; the next iteration resumes at its position."""
        as_int("position", state.get("position"), 0)
        self.sampler.load_state_dict(state)
        self._epoch = None
