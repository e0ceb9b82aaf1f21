"""One step protocol for every training loop: :class:`Sieve`.

A loop that trains with a sievetrain sampler and selector does the same things in the
same order, whichever front end runs it: sievetrain's ``Trainer``, the Lightning
callback, the Hugging Face ``SieveTrainer``, an accelerate loop or a hand-written one.
``Sieve`` is the one home of that protocol, and each front end calls it:

1. ``begin_epoch(epoch, model, dataset)`` before the epoch's first batch: what is left
   of the selector's preparation (``prepare``: RHO-LOSS trains its reference model,
   counted in ``samples_backpropagated``), the sampler's epoch (``set_epoch``), its
   ``refresh`` (a coreset chooses its subset from the model there), the selector's
   epoch; and the check that the sampler shards over the process group's ranks.
2. ``select(batch, model)`` for every loaded batch: the selector picks the samples that
   get the backward pass. A selector that ``accumulates`` (Selective Backprop) has its
   kept samples gathered into full batches of ``batch_size``, so ``select`` returns a
   batch once enough are waiting and None until then: at most one batch per loaded
   batch, so that a framework's one step per batch can train it.
3. Once the epoch's batches are loaded, ``flush()``: what is still waiting, a short
   batch (or None). ``select`` of an empty batch flushes too: the end-of-epoch batch
   that a :class:`~sievetrain.integrations.ResumableLoader` bound to a gathering sieve
   hands a framework that owns the loop.
4. ``loss(logits, y, idx)``: the sampler's weighted loss (InfoBatch is fed the losses)
   of the targets the selector lets through (Rho-1 keeps some tokens), counted in
   ``samples_backpropagated`` and, given an ``audit``, per flag and class
   (:class:`~sievetrain.audit.SelectionAudit`).

``batches(loader, model)`` runs 2 and 3 over a loader, for a hand-written loop.
``state_dict()`` is one schema for every front end's checkpoint: the sampler's state
with its position at the samples ``select`` consumed (not the ones a loader pulled
ahead), the selector's, the kept samples still waiting, the counter and the audit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sievetrain.audit import SelectionAudit
from sievetrain.batches import Batch, Waiting, join_batches, take_rows, to_device
from sievetrain.data import IndexedDataset
from sievetrain.distributed import unwrap, world
from sievetrain.options import as_int
from sievetrain.sampling.base import EpochSampler
from sievetrain.selection.base import KeepAll, Selector

__all__ = ["Sieve"]


class Sieve:
    """Runs an epoch-level sampler and a batch-level selector in any training loop.

    Args:
        sampler: the :class:`~sievetrain.sampling.EpochSampler` the loader draws from.
        selector: a :class:`~sievetrain.selection.Selector`; None keeps every sample.
        batch_size: this rank's training batch: the size gathered batches reach. Needed
            when the selector ``accumulates`` (Selective Backprop). The loader's batch is
            :attr:`loader_batch_size` (the same, but for a selector that picks from
            candidate batches of several training batches, RHO-LOSS).
        input_key, label_key: where a batch that is a mapping (Hugging Face) holds the
            model's input and the targets; its dataset index is under ``"idx"``. A
            batch that is a tuple or list is ``(x, y, idx)``.

    Under a process group every rank builds its own, with the same selector options,
    and calls every method together (a selector or a sampler may run collectives).
    ``state_dict()`` is the same on every rank where the sampler's and selector's are,
    so rank 0's checkpoint resumes every rank.
    """

    def __init__(
        self,
        sampler: EpochSampler,
        selector: Selector | None = None,
        *,
        batch_size: int | None = None,
        input_key: str = "input_ids",
        label_key: str = "labels",
        audit: SelectionAudit | None = None,
    ) -> None:
        if not isinstance(sampler, EpochSampler):
            raise TypeError(
                f"sampler must be a sievetrain EpochSampler, got {type(sampler).__name__}"
            )
        if selector is not None and not isinstance(selector, Selector):
            raise TypeError(
                f"selector must be a sievetrain Selector or None, got {type(selector).__name__}"
            )
        self.sampler = sampler
        self.selector = KeepAll() if selector is None else selector
        if self.selector.accumulates or batch_size is not None:
            what = f"batch_size (needed to gather {type(self.selector).__name__}'s samples)"
            batch_size = as_int(what, batch_size, 1)
        self.batch_size = batch_size
        self.input_key, self.label_key = input_key, label_key
        self.samples_backpropagated = 0  # this rank's, as loss() counts them
        self.audit = audit
        self._waiting = Waiting()
        self._position: int | None = None  # samples of the epoch select consumed
        self._begun: int | None = None  # the epoch begin_epoch started in this process
        self._resume: int | None = None  # the epoch a loaded state was saved in

    @property
    def loader_batch_size(self) -> int | None:
        """The batch the train loader must give: ``batch_size`` times the selector's
        ``candidates`` (the training batches each loaded batch is selected from)."""
        if self.batch_size is None:
            return None
        return self.batch_size * self.selector.candidates

    @property
    def accumulates(self) -> bool:
        """Whether kept samples are gathered into full batches."""
        return self.selector.accumulates

    @property
    def position(self) -> int:
        """Samples of the sampler's current epoch consumed by :meth:`select` on this rank
        (before the first: the sampler's own position)."""
        return self.sampler.position if self._position is None else self._position

    @property
    def waiting(self) -> int:
        """Kept samples waiting to fill a batch."""
        return self._waiting.size

    def check_world(self) -> None:
        """Raise ValueError unless the sampler shards over the process group's ranks."""
        size = world()[0]
        if self.sampler.num_replicas != size:
            raise ValueError(
                f"{type(self.sampler).__name__} shards over num_replicas="
                f"{self.sampler.num_replicas} ranks but the process group has {size}: leave "
                f"num_replicas and rank unset, and the sampler follows the group at its first epoch"
            )

    def begin_epoch(self, epoch: int, model: nn.Module, dataset: Dataset) -> None:
        """Start ``epoch``: the sampler's epoch and refresh (from ``model`` and ``dataset``,
        its items ``(x, y)``; an :class:`~sievetrain.data.IndexedDataset` is unwrapped),
        the selector's epoch. Beginning the epoch a loaded state was saved in continues
        it (its position and waiting samples); beginning the epoch already begun does
        nothing, so frameworks may call it from two hooks.

        Raises:
            ValueError: the sampler does not shard over the process group's ranks.
        """
        self.check_world()
        epoch = as_int("epoch", epoch, 0)
        if epoch == self._begun:
            return
        while self.prepare(model, dataset) is not None:  # what the Trainer has not run
            pass
        self.sampler.set_epoch(epoch)  # keeps a loaded position of this epoch
        if isinstance(dataset, IndexedDataset):
            dataset = dataset.dataset
        self.sampler.refresh(model, dataset)  # a coreset selects once per round
        self.selector.set_epoch(epoch)
        if self.audit is not None:
            self.audit.set_epoch(epoch)
        if epoch != self._resume:
            self._position, self._waiting = 0, Waiting()
        self._begun, self._resume = epoch, None

    def prepare(self, model: nn.Module, dataset: Dataset) -> int | None:
        """One unit of the selector's work before training (a reference model's epoch):
        the samples it backpropagated, counted in ``samples_backpropagated``; None once
        the selector is prepared. ``begin_epoch`` runs what is left; a loop that wants
        to time it, or checkpoint between units, calls this until None first."""
        if isinstance(dataset, IndexedDataset):
            dataset = dataset.dataset
        trained = self.selector.prepare(unwrap(model), dataset)
        if trained is not None:
            self.samples_backpropagated += trained
        return trained

    def select(self, batch: Batch, model: nn.Module) -> Batch | None:
        """The batch to train now, of ``batch``'s form, or None: nothing yet.

        Without accumulation, the samples of ``batch`` the selector keeps (None if it
        keeps none). With it, the first ``batch_size`` waiting samples once that many
        wait. An empty ``batch`` marks the end of the epoch's data: :meth:`flush`.
        ``model`` is what the selector scores with (a DDP wrapper is fine).
        """
        x, y, idx = self._parts(batch)
        size = len(y)
        if size == 0:
            return self.flush()
        self._position = self.position + size
        if self.selector.needs_index:
            keep = self.selector.select(model, x, y, idx)
        else:
            keep = self.selector.select(model, x, y)
        kept, count = (batch, size) if keep is None else (take_rows(batch, keep, size), len(keep))
        if not self.accumulates:
            return kept if count else None
        self._waiting.add(kept, count)
        if self._waiting.size >= self.batch_size:
            return self._waiting.take(self.batch_size)
        return None

    def flush(self) -> Batch | None:
        """The samples still waiting, as one (short) batch; None if none wait."""
        return self._waiting.take(self._waiting.size) if self._waiting.size else None

    def empty_batch(self, like: Batch | None) -> Batch | None:
        """An empty batch of ``like``'s form (of the waiting samples' form when ``like``
        is None), whose :meth:`select` flushes: what a loader bound to a gathering sieve
        hands a framework at the end of each pass. None if the sieve does not gather, or
        there is nothing to give the form."""
        if not self.accumulates:
            return None
        if like is None:
            if not self._waiting.chunks:
                return None
            like = self._waiting.chunks[0]
        size = len(self._parts(like)[1])
        return take_rows(like, torch.zeros(0, dtype=torch.long), size)

    def batches(
        self, loader: Iterable[Batch], model: nn.Module, *, device: torch.device | None = None
    ) -> Iterator[Batch]:
        """Every batch to train this epoch: :meth:`select` over ``loader``'s batches (moved
        to ``device`` first, if given), then :meth:`flush`."""
        for batch in loader:
            if device is not None:
                batch = to_device(batch, device)
            if (chosen := self.select(batch, model)) is not None:
                yield chosen
        if (rest := self.flush()) is not None:
            yield rest

    def loss(self, logits: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        """The batch's training loss, the sampler's ``loss``: cross-entropy with the
        sampler's weights (a weighted mean for a coreset, ``mean(w * l)`` for InfoBatch,
        which it feeds the losses); counted in ``samples_backpropagated``.

        Raises:
            ValueError: the batch is empty.
        """
        if len(y) == 0:
            raise ValueError("no sample to train: select() returns None when none is kept")
        self.samples_backpropagated += len(y)
        if self.audit is not None:
            self.audit.update(idx)
        y = self.selector.targets(logits.detach(), y, idx)  # Rho-1 keeps some tokens
        return self.sampler.loss(logits, y, idx)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state (position: the samples consumed), the selector's, the
        samples waiting (a batch, or None), ``samples_backpropagated`` and the audit's
        counts (with an audit). A collective where the sampler's state is (InfoBatch):
        call it on every rank."""
        waiting = self._waiting.chunks
        state = {
            "sampler": {**self.sampler.state_dict(), "position": self.position},
            "selector": self.selector.state_dict(),
            "waiting": join_batches(waiting) if waiting else None,
            "samples_backpropagated": self.samples_backpropagated,
        }
        if self.audit is not None:
            state["audit"] = self.audit.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; ``begin_epoch`` of its epoch then continues it.
        A state without ``waiting`` or the counter (a Trainer checkpoint from before the
        sieve) has none waiting and the count 0; one without ``audit`` leaves the audit's
        counts as they are."""
        self.sampler.load_state_dict(state["sampler"])
        self.selector.load_state_dict(state["selector"])
        self.samples_backpropagated = as_int(
            "samples_backpropagated", state.get("samples_backpropagated", 0), 0
        )
        if self.audit is not None and "audit" in state:
            self.audit.load_state_dict(state["audit"])
        self._waiting = Waiting()
        if (waiting := state.get("waiting")) is not None:
            self._waiting.add(waiting, len(self._parts(waiting)[1]))
        self._position = as_int("position", state["sampler"]["position"], 0)
        self._begun, self._resume = None, as_int("epoch", state["sampler"]["epoch"], 0)

    def _parts(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, idx)`` of a batch."""
        if isinstance(batch, Mapping):
            keys = (self.input_key, self.label_key, "idx")
            if missing := [key for key in keys if key not in batch]:
                raise ValueError(
                    f"a batch lacks {missing} (it has {sorted(batch)}): set input_key and "
                    f"label_key, and wrap the dataset in sievetrain.data.IndexedDataset"
                )
            return batch[keys[0]], batch[keys[1]], batch[keys[2]]
        if isinstance(batch, tuple | list) and len(batch) == 3:
            return batch[0], batch[1], batch[2]
        raise ValueError(
            f"a batch must be (x, y, idx) or a mapping with an 'idx' entry, got "
            f"{type(batch).__name__}: wrap the dataset in sievetrain.data.IndexedDataset"
        )
