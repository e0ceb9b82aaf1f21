"""The batch-level selector protocol: which samples of a batch get the backward pass.

The trainer calls, for every selector, ``set_epoch(epoch)`` at the start of each
epoch and ``select(model, x, y)`` once per batch, before the forward pass with
gradients. ``select`` returns the positions in the batch to keep (an int64 tensor)
or ``None`` for "keep every sample". Any forward work it does to decide (an
early-exit scoring pass, a no-grad loss pass) is charged to the run's selection
time and reported through ``stats()`` (``samples_forwarded_partially`` for passes
that stop at an early exit, ``samples_forwarded_no_grad`` for whole forward passes
without gradients).

After every epoch the trainer asks ``score(model, x, y)`` on held-out batches and
measures how well the scores rank the true per-sample losses (Spearman); a
selector that does not score returns None. A selector whose class sets
``accumulates = True`` has its kept samples gathered into full batches before a
backward pass (the remainder is trained at the end of the epoch).

A selector may also:

- set ``needs_index = True`` to be called as ``select(model, x, y, idx)``, with the
  batch's dataset indices (RHO-LOSS looks up each sample's reference loss);
- set ``candidates`` > 1: a loaded (candidate) batch is that many training batches,
  and the kept samples are gathered into training batches (it must keep at most one
  training batch of each candidate batch);
- have work to do before training, in ``prepare(model, dataset)``: one unit of it per
  call (a reference model's epoch), returning the samples it backpropagated, and None
  once there is nothing left. The trainer calls it until None, on its clock (phase
  ``reference``) with a checkpoint after each unit; ``Sieve.begin_epoch`` runs
  whatever is left, so every front end prepares the selector;
- choose which targets of a training batch the loss reads, in ``targets(logits, y,
  idx)`` (Rho-1 keeps a fraction of the tokens; the others become ``IGNORE_INDEX``).

Under ``DistributedDataParallel`` the trainer passes the model it trains, the DDP
wrapper, on every rank. A selector scores through the module inside it
(:func:`sievetrain.distributed.unwrap`), so a scoring pass runs no DDP collective.
``select`` is called once per batch on every rank, in lockstep, so it may run
collectives of its own (every rank calls it equally often); ``score`` must not (the
trainer may score on some ranks only). A selector must keep every rank's optimizer
step count equal, or the next DDP backward deadlocks: one that ``accumulates`` keeps
the same number of samples of each batch on every rank (equal local batch sizes come
from the lockstep samplers). Its ``state_dict`` is the same on every rank, so rank
0's checkpoint resumes every rank.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.utils.data import Dataset

from sievetrain.options import as_int

__all__ = ["KeepAll", "Selector", "keep_count"]


def keep_count(batch: int, ratio: float) -> int:
    """Samples kept of a batch: ``ceil(ratio * batch)``, at least 1 for a non-empty batch.

    ``ratio * batch`` is rounded to 9 decimals first, so that a product that is an
    integer on paper (0.3 * 10 = 3.0000000000000004 in floating point) is not
    rounded up past it.
    """
    return min(batch, max(math.ceil(round(ratio * batch, 9)), 1 if batch else 0))


class Selector:
    """Base of batch-level selectors: every method but ``select`` does nothing by default."""

    accumulates: ClassVar[bool] = False  # gather kept samples into full backward batches
    needs_index: ClassVar[bool] = False  # select() takes the batch's dataset indices too
    candidates: int = 1  # training batches per loaded (candidate) batch
    epoch: int = 0  # the epoch set last; a subclass that overrides set_epoch calls super()

    def select(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        """Positions of ``x`` (shape (B, ...)) to backpropagate, or None for all."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every epoch; keeps it as ``self.epoch``.

        Raises:
            ValueError: ``epoch`` is not an integer >= 0.
        """
        self.epoch = as_int("epoch", epoch, 0)

    def prepare(self, model: nn.Module, dataset: Dataset) -> int | None:
        """One unit of the work before training (e.g. a reference model's epoch) with
        ``model`` the run's (unwrapped, untrained) model and ``dataset`` its training
        set of ``(x, y)``; the samples it backpropagated, None when nothing is left."""
        return None

    def targets(self, logits: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        """The targets of a training batch the loss reads: ``y`` itself by default; a
        token-level selector returns a copy with the dropped positions set to
        ``IGNORE_INDEX``. ``logits`` are detached."""
        return y

    def score(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        """The selector's score of each sample (B,), without side effects; None: no scores."""
        return None

    def stats(self) -> dict[str, Any]:
        """Counters to merge into the run's results (e.g. samples scored)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class KeepAll(Selector):
    """The identity selector: every sample of every batch is backpropagated."""

    def select(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        return None
