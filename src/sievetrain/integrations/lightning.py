"""PyTorch Lightning: sievetrain's samplers and selectors in a ``LightningModule``.

Three pieces, with default ``Trainer`` settings:

- :class:`SieveCallback`, a ``Callback``: runs the step protocol of a
  :class:`~sievetrain.Sieve` over a sampler and a selector (the epoch's refresh,
  selection, gathering, the loss, the checkpointed state).
- ``train_dataloader()`` returns ``callback.dataloader(dataset, batch_size,
  sampler=...)``: a :class:`~sievetrain.integrations.ResumableLoader` over a sievetrain
  sampler (SRS, RS2, InfoBatch, GRAD-MATCH, ...) bound to the callback's sieve. The
  sampler shards by the process group's ranks at its first epoch, so it may be built
  anywhere.
- In ``training_step``: ``batch = callback.select(batch)`` (the samples to train now;
  None: nothing yet, return None) and ``loss = callback.loss(self(x), y, idx)``.

What Lightning does with the loader (read in 2.5.5 and 2.6.6, where the two agree;
``lightning/pytorch/loops/fit_loop.py``), and what :class:`SieveCallback` adds:

- A ``DistributedSampler`` (every sievetrain sampler is one) is left as it is, not
  wrapped (``_requires_distributed_sampler`` in ``trainer/connectors/data_connector.py``).
  ``FitLoop.on_advance_start`` calls its ``set_epoch`` before ``on_train_epoch_start``,
  where the callback begins the sieve's epoch; the loader's first batch is drawn after.
- ``FitLoop.setup_data`` counts an epoch's batches once per fit, and ``iter``-ates the
  loader before the first ``set_epoch``; the loader's iterator is a generator, so no
  index is drawn then. InfoBatch and GRAD-MATCH epochs change length, and a gathering
  selector adds the end-of-epoch batch, so the callback sets the count again at the
  start (``fit_loop.max_batches``, and ``trainer.val_check_batch`` for validation at
  the epoch's end).
- A checkpoint holds the loader's ``state_dict``, but ``_load_combined_loader_states``
  loads it only when resuming mid-epoch (``FitLoop.restarting``). The callback's state
  is the sieve's, the sampler's included, loaded at ``on_train_start``, so InfoBatch's
  scores and GRAD-MATCH's subset also survive a checkpoint taken at an epoch's end.
- The loader is bound to the sieve (``loader.sieve``): its saved position is the
  samples the step's ``select`` consumed, whatever Lightning fetched ahead. Bound when
  it is made, its length counts a gathering sieve's end-of-epoch batch before
  ``setup_data`` reads it (Lightning's data fetcher stops at that length).
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

from torch import Tensor, nn
from torch.utils.data import Dataset

from sievetrain.integrations import missing_extra
from sievetrain.integrations.loader import ResumableLoader
from sievetrain.sampling.base import EpochSampler
from sievetrain.selection.base import KeepAll, Selector
from sievetrain.sieve import Sieve as _Sieve  # the name Sieve: the callback's, deprecated

try:
    import lightning
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as error:  # the optional extra is not installed
    raise ImportError(missing_extra("lightning", "lightning")) from error

__all__ = ["MIN_LIGHTNING", "SieveCallback"]

MIN_LIGHTNING = (2, 3)  # the extra's lightning>=2.3; tested on 2.5.5 and 2.6.6


def _check_version(version: str) -> None:
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < MIN_LIGHTNING:
        raise ImportError(
            f"sievetrain.integrations.lightning needs lightning >= 2.3, found lightning "
            f"{version}: pip install 'sievetrain[lightning]'"
        )


_check_version(lightning.__version__)


class SieveCallback(Callback):
    """Runs a :class:`~sievetrain.Sieve` in Lightning's loop, and checkpoints it.

    Args:
        selector: a batch-level :class:`~sievetrain.selection.Selector` (SIFT,
            RandomKeep, SelectiveBackprop); None keeps every sample.

    Pass it to the ``Trainer`` (``callbacks=[callback]``) and keep it in the module,
    whose ``train_dataloader()`` returns :meth:`dataloader`: a
    :class:`~sievetrain.integrations.ResumableLoader` bound to :attr:`sieve`, made over
    its sampler, the selector and its batch size. (A ``ResumableLoader`` made otherwise
    is bound at ``on_train_start``, unless the selector gathers.) At each epoch start
    (after Lightning's ``set_epoch``) it calls ``sieve.begin_epoch(epoch, pl_module,
    dataset)``. Its ``state_dict`` (in every checkpoint) is the sieve's. Lightning saves
    and loads it on every rank; the checkpoint rank 0 wrote loads on every rank, as the
    selectors and samplers are the same on every rank.
    """

    def __init__(self, selector: Selector | None = None) -> None:
        if selector is not None and not isinstance(selector, Selector):
            raise TypeError(
                f"selector must be a sievetrain Selector or None, got {type(selector).__name__}"
            )
        self.selector = KeepAll() if selector is None else selector
        self._trainer: Trainer | None = None
        self._sieve: _Sieve | None = None
        self._loaded: dict[str, Any] | None = None  # a checkpoint's state, to load

    @property
    def sieve(self) -> _Sieve:
        """The step protocol, made at ``on_train_start``."""
        if self._sieve is None:
            raise RuntimeError("the callback has no sieve yet: it makes it when fit() starts")
        return self._sieve

    @property
    def loader(self) -> ResumableLoader:
        """The train loader, found at ``on_train_start``."""
        if self._trainer is None:
            raise RuntimeError(
                "the callback has no train loader yet: it finds it when fit() starts"
            )
        return self._trainer.train_dataloader

    @property
    def sampler(self) -> EpochSampler:
        """The train loader's sievetrain sampler."""
        return self.sieve.sampler

    @property
    def samples_backpropagated(self) -> int:
        """Samples :meth:`loss` was given on this rank (every rank counts as many)."""
        return 0 if self._sieve is None else self._sieve.samples_backpropagated

    def dataloader(
        self, dataset: Dataset, batch_size: int, *, sampler: EpochSampler, **kwargs: Any
    ) -> ResumableLoader:
        """The train loader to return from ``train_dataloader()``: a ``ResumableLoader``
        over ``sampler`` (``batch_size`` samples of this rank a training batch; a
        selector with candidate batches, RHO-LOSS, loads several at once; ``kwargs`` are
        other ``DataLoader`` arguments), bound to :attr:`sieve`, which it makes."""
        if self._sieve is None or self._sieve.sampler is not sampler:
            self._sieve = _Sieve(sampler, self.selector, batch_size=batch_size)
        loaded = self._sieve.loader_batch_size
        loader = ResumableLoader(dataset, loaded, sampler=sampler, **kwargs)
        loader.sieve = self._sieve
        return loader

    def select(self, batch: Any, model: nn.Module | None = None) -> Any | None:
        """The batch to train in this step, of ``batch``'s form (``(x, y, idx)``), or None:
        nothing to train yet (return None from ``training_step``; Lightning then makes no
        backward pass, and the optimizer step it still takes finds no gradient).

        Call it in ``training_step``, on every rank: see :meth:`sievetrain.Sieve.select`
        (a gathering selector returns full batches, and the loader's empty last batch
        of each epoch trains the rest). ``model`` is what the selector runs its scoring
        pass on: by default the trainer's model (the DDP wrapper, or the
        ``LightningModule``; its ``forward`` gives the logits, and a SIFT stage is named
        from it, e.g. ``"net.stem"``), or the network inside it.
        """
        if model is None:
            if self._trainer is None:
                raise RuntimeError("select runs in training_step, once fit() has started")
            model = self._trainer.model
        return self.sieve.select(batch, model)

    def loss(self, logits: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        """The batch's training loss: :meth:`sievetrain.Sieve.loss` (the sampler's
        weights; InfoBatch is fed the losses), counted in :attr:`samples_backpropagated`."""
        return self.sieve.loss(logits, y, idx)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = _train_loader(trainer)
        self._trainer = trainer
        if loader.sieve is None:  # made without dataloader(): bind it now
            if self.selector.accumulates:
                raise ValueError(
                    f"{type(self.selector).__name__} gathers kept samples into full batches, "
                    f"and each epoch ends with a batch Lightning must count from the start: "
                    f"return callback.dataloader(dataset, batch_size, sampler=...) from "
                    f"train_dataloader()"
                )
            self._sieve = _Sieve(loader.sampler, self.selector, batch_size=loader.batch_size)
            loader.sieve = self._sieve  # its position
        elif loader.sieve is not self._sieve:
            raise ValueError("the train loader is bound to another callback's sieve")
        if self._loaded is not None:  # Lightning loads a loader only mid-epoch: load always
            self._load(self._loaded)
            self._loaded = None
        # Resumed mid-epoch, Lightning calls no on_train_epoch_start.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dataset = self.loader.dataset  # a coreset reads (x, y) items: the sieve unwraps it
        self.sieve.begin_epoch(trainer.current_epoch, pl_module, dataset)
        _count_batches(trainer, len(self.loader))

    def state_dict(self) -> dict[str, Any]:
        """The sieve's state (a collective where the sampler's is: InfoBatch's)."""
        if self._sieve is None:  # before fit: what was loaded, or the selector's alone
            return self._loaded or {"selector": self.selector.state_dict(), "sampler": None}
        return self._sieve.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._sieve is None:
            self._loaded = state  # the loader and the sieve are made later
        else:
            self._load(state)

    def _load(self, state: dict[str, Any]) -> None:
        if state.get("sampler") is None:  # saved before any loader existed
            self.selector.load_state_dict(state["selector"])
        else:
            self.sieve.load_state_dict(state)


def __getattr__(name: str) -> Any:
    if name == "Sieve":  # the callback's earlier name
        warnings.warn(
            "sievetrain.integrations.lightning.Sieve is now SieveCallback "
            "(sievetrain.Sieve is the framework-free step protocol it runs)",
            DeprecationWarning,
            stacklevel=2,
        )
        return SieveCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _train_loader(trainer: Trainer) -> ResumableLoader:
    """The trainer's train loader, checked: one ResumableLoader, the Trainer on as many
    devices as torchrun started processes."""
    loader = trainer.train_dataloader
    if not isinstance(loader, ResumableLoader):
        raise TypeError(
            f"SieveCallback needs train_dataloader() to return one "
            f"sievetrain.integrations.ResumableLoader, got {type(loader).__name__}"
        )
    launched = int(os.environ.get("WORLD_SIZE", trainer.world_size))  # torchrun's processes
    if launched != trainer.world_size:  # each would train alone, on the same data
        raise ValueError(
            f"WORLD_SIZE={launched} processes were started but the Trainer runs "
            f"{trainer.world_size}: pass devices= (e.g. devices=int(os.environ"
            f"['LOCAL_WORLD_SIZE']) on the CPU, where Lightning's default is 1)"
        )
    return loader  # the sieve checks that the sampler shards over the Trainer's ranks


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
