"""PyTorch Lightning: sievetrain's samplers and selectors in a ``LightningModule``.

Three pieces, with default ``Trainer`` settings:

- ``train_dataloader()`` returns a :class:`~sievetrain.integrations.ResumableLoader`
  over a sievetrain sampler (SRS, RS2, InfoBatch, GRAD-MATCH, ...). Build the sampler
  there: Lightning has started the process group by then, so it shards by rank.
- :class:`Sieve`, a ``Callback``: refreshes the sampler and sets the selector's epoch
  at each epoch start, and keeps the selector's and the sampler's state in Lightning's
  checkpoints.
- In ``training_step``: ``x, y, idx = sieve.select(batch)`` (the samples a selector
  keeps) and ``loss = sieve.loss(self(x), y, idx)`` (the sampler's loss weights, and
  the losses InfoBatch learns from).

What Lightning does with the loader (read in 2.5.5 and 2.6.6, where the two agree;
``lightning/pytorch/loops/fit_loop.py``), and what :class:`Sieve` adds:

- A ``DistributedSampler`` (every sievetrain sampler is one) is left as it is, not
  wrapped (``_requires_distributed_sampler`` in ``trainer/connectors/data_connector.py``).
  ``FitLoop.on_advance_start`` calls its ``set_epoch`` before ``on_train_epoch_start``,
  where :class:`Sieve` refreshes it; the loader's first batch is drawn after that.
- ``FitLoop.setup_data`` counts an epoch's batches once per fit, and ``iter``-ates the
  loader before the first ``set_epoch``; the loader's iterator is a generator, so no
  index is drawn then. InfoBatch and GRAD-MATCH epochs change length, so :class:`Sieve`
  sets the count again at each epoch start (``fit_loop.max_batches``, and
  ``trainer.val_check_batch`` for validation at the epoch's end).
- A checkpoint holds the loader's ``state_dict``, but ``_load_combined_loader_states``
  loads it only when resuming mid-epoch (``FitLoop.restarting``). :class:`Sieve` saves
  the sampler's state with its own and loads it at ``on_train_start``, so InfoBatch's
  scores and GRAD-MATCH's subset also survive a checkpoint taken at an epoch's end.
- The loader counts the batches handed out; :class:`Sieve` sets ``batches_done`` from
  ``batch_idx``, which counts from the epoch's start, resumed or not, so the position
  saved is the batches trained even when a loader is read ahead.
"""

from __future__ import annotations

import os
import re
from typing import Any

from torch import Tensor, nn

from sievetrain.data import IndexedDataset
from sievetrain.integrations import missing_extra
from sievetrain.integrations.loader import ResumableLoader
from sievetrain.sampling.base import EpochSampler
from sievetrain.selection.base import KeepAll, Selector

try:
    import lightning
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as error:  # the optional extra is not installed
    raise ImportError(missing_extra("lightning", "lightning")) from error

__all__ = ["MIN_LIGHTNING", "Sieve"]

MIN_LIGHTNING = (2, 3)  # the extra's lightning>=2.3; tested on 2.5.5 and 2.6.6


def _check_version(version: str) -> None:
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < MIN_LIGHTNING:
        raise ImportError(
            f"sievetrain.integrations.lightning needs lightning >= 2.3, found lightning "
            f"{version}: pip install 'sievetrain[lightning]'"
        )


_check_version(lightning.__version__)


class Sieve(Callback):
    """Runs a sievetrain sampler and selector in Lightning's loop, and checkpoints them.

    Args:
        selector: a batch-level :class:`~sievetrain.selection.Selector` (SIFT,
            RandomKeep, SelectiveBackprop); None keeps every sample.

    Pass it to the ``Trainer`` (``callbacks=[sieve]``) and keep it in the module, whose
    ``train_dataloader()`` returns a :class:`~sievetrain.integrations.ResumableLoader`;
    :attr:`sampler` is that loader's sampler from ``on_train_start`` on. At each epoch
    start (after Lightning's ``set_epoch``) it calls ``sampler.refresh(pl_module,
    dataset)`` and ``selector.set_epoch(epoch)``. Its ``state_dict`` (in every
    checkpoint) holds the selector's state (SIFT's exit head, Selective Backprop's
    loss history), the sampler's and :attr:`samples_backpropagated`. Lightning saves
    and loads it on every rank; the checkpoint rank 0 wrote loads on every rank, as the
    selectors and samplers are the same on every rank.
    """

    def __init__(self, selector: Selector | None = None) -> None:
        if selector is not None and not isinstance(selector, Selector):
            raise TypeError(
                f"selector must be a sievetrain Selector or None, got {type(selector).__name__}"
            )
        self.selector = KeepAll() if selector is None else selector
        self.samples_backpropagated = 0  # this rank's; every rank trains as many (lockstep)
        self._trainer: Trainer | None = None
        self._loader: ResumableLoader | None = None
        self._pending: dict[str, Any] | None = None  # a checkpoint's sampler state, to load

    @property
    def loader(self) -> ResumableLoader:
        """The train loader, found at ``on_train_start``."""
        if self._loader is None:
            raise RuntimeError("Sieve has no train loader yet: it finds it when fit() starts")
        return self._loader

    @property
    def sampler(self) -> EpochSampler:
        """The train loader's sievetrain sampler."""
        return self.loader.sampler

    def select(
        self, batch: tuple[Tensor, Tensor, Tensor], model: nn.Module | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The samples of ``batch`` = ``(x, y, idx)`` the selector keeps, as ``(x, y, idx)``.

        Call it in ``training_step``, on every rank. ``model`` is what the selector runs
        its scoring pass on: by default the trainer's model (the DDP wrapper, or the
        ``LightningModule``; its ``forward`` gives the logits, and a SIFT stage is named
        from it, e.g. ``"net.stem"``), or the network inside it.
        """
        x, y, idx = batch
        if model is None:
            if self._trainer is None:
                raise RuntimeError("Sieve.select runs in training_step, once fit() has started")
            model = self._trainer.model
        keep = self.selector.select(model, x, y)
        if keep is None:
            return x, y, idx
        return x[keep], y[keep], idx[keep.to(idx.device)]

    def loss(self, logits: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        """The batch's training loss, the sampler's ``loss`` (as sievetrain's own trainer
        computes it): cross-entropy with the sampler's weights, a weighted mean for a
        coreset (GRAD-MATCH), ``mean(w * l)`` for InfoBatch, which it feeds the losses.

        Raises:
            ValueError: the batch is empty. Selective Backprop may keep no sample of a
                batch in one process: return None from ``training_step`` when
                ``len(y) == 0``; Lightning then makes no backward pass, and the
                optimizer step it still takes finds no gradient.
        """
        if len(y) == 0:
            raise ValueError(
                "no sample to train (the selector kept none): return None from "
                "training_step when len(y) == 0: Lightning then trains nothing on this batch"
            )
        self.samples_backpropagated += len(y)
        return self.sampler.loss(logits, y, idx)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._trainer, self._loader = trainer, _train_loader(trainer)
        if self._pending is not None:  # Lightning loads it only mid-epoch: load it always
            self._loader.load_state_dict(self._pending)
            self._pending = None
        # Resumed mid-epoch, Lightning calls no on_train_epoch_start. Both calls are
        # idempotent: a coreset selects once per round, the round is in its state.
        self._begin_epoch(trainer, pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._begin_epoch(trainer, pl_module)
        _count_batches(trainer, len(self.loader))

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.loader.batches_done = batch_idx  # the ones before this batch are trained

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Before ModelCheckpoint, which Lightning puts after every other callback.
        self.loader.batches_done = batch_idx + 1

    def state_dict(self) -> dict[str, Any]:
        """The selector's state, the sampler's (with the position trained) and the count
        of samples backpropagated (a collective where the sampler's state is)."""
        return {
            "selector": self.selector.state_dict(),
            "sampler": None if self._loader is None else self._loader.state_dict(),
            "samples_backpropagated": self.samples_backpropagated,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selector.load_state_dict(state["selector"])
        self.samples_backpropagated = int(state["samples_backpropagated"])
        self._pending = state["sampler"]  # the loader is built later, in setup_data

    def _begin_epoch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dataset = self.loader.dataset  # a coreset reads (x, y) items: no index added
        if isinstance(dataset, IndexedDataset):
            dataset = dataset.dataset
        self.sampler.refresh(pl_module, dataset)  # GRAD-MATCH selects here
        self.selector.set_epoch(trainer.current_epoch)


def _train_loader(trainer: Trainer) -> ResumableLoader:
    """The trainer's train loader, checked: one ResumableLoader sharded over its ranks."""
    loader = trainer.train_dataloader
    if not isinstance(loader, ResumableLoader):
        raise TypeError(
            f"Sieve needs train_dataloader() to return one "
            f"sievetrain.integrations.ResumableLoader, got {type(loader).__name__}"
        )
    launched = int(os.environ.get("WORLD_SIZE", trainer.world_size))  # torchrun's processes
    if launched != trainer.world_size:  # each would train alone, on the same data
        raise ValueError(
            f"WORLD_SIZE={launched} processes were started but the Trainer runs "
            f"{trainer.world_size}: pass devices= (e.g. devices=int(os.environ"
            f"['LOCAL_WORLD_SIZE']) on the CPU, where Lightning's default is 1)"
        )
    if loader.sampler.num_replicas != trainer.world_size:
        raise ValueError(
            f"the sampler shards over num_replicas={loader.sampler.num_replicas} ranks but the "
            f"Trainer runs {trainer.world_size}: build it in train_dataloader(), once "
            f"Lightning has started the process group"
        )
    return loader


def _count_batches(trainer: Trainer, batches: int) -> None:
    """Make this epoch's batch count Lightning's (it counts them once, in setup_data)."""
    limit = trainer.limit_train_batches  # 1.0 (a float) unless the user set a limit
    if not (isinstance(limit, float) and limit == 1.0):  # theirs stands
        return
    # An epoch of 0 batches (GRAD-MATCH's warm start) ends by running out of batches; a
    # count of 0 would end the fit ("No training batches").
    trainer.fit_loop.max_batches = max(batches, 1)
    check = trainer.val_check_batch
    if isinstance(trainer.val_check_interval, float) and check not in (None, float("inf")):
        trainer.val_check_batch = max(1, int(batches * trainer.val_check_interval))
