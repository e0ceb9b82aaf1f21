"""A small reference model trained before the run, for selectors that compare the
run's losses with it (RHO-LOSS per sample, Rho-1 per token).

:func:`plan_reference` splits the training indices: which samples train each
reference model, which decide its early stopping, which it scores, and which the
run must then not train on. Two layouts:

- ``holdout``: one model trained on a random ``holdout`` fraction of the allowed
  samples (the ``pool``, e.g. the target text), which the run then never trains on;
  it scores every other sample.
- ``twin``: the samples in two random halves; each half's model scores the other
  half, so no sample is lost (twice the reference training).

:class:`ReferencePhase` trains them one epoch per :meth:`~ReferencePhase.advance`,
each with its own early-stopping part, keeps each model's best weights by validation
loss, and ends by scoring: one loss per sample (or per token) of the training set,
computed once, in evaluation mode and without augmentation. Every draw comes from its
seed, so the phase is the same on every rank and after a resume; its state (the
model in training, its optimizer, its best weights, the finished losses) round-trips
through ``state_dict()``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sievetrain.data import make_loader
from sievetrain.distributed import broadcast_tensors
from sievetrain.losses import batch_loss, sample_losses, token_losses
from sievetrain.options import Options, RunContext, option
from sievetrain.rng import derive_seed, make_generator, rng_devices
from sievetrain.scoring import scoring_mode

__all__ = ["ReferenceOptions", "ReferencePhase", "ReferencePlan", "plan_reference"]

Layout = Literal["holdout", "twin"]


@dataclass(frozen=True)
class ReferenceOptions(Options):
    """How the reference model is trained: the options RHO-LOSS and Rho-1 share."""

    holdout: float = option(
        0.1, "fraction of the training split the reference trains on (not trained on after)"
    )
    ref_model: str | None = option(
        None, "the reference model's architecture (a model name); none: the run's model"
    )
    ref_epochs: int = option(10, "most epochs the reference model trains, >= 1")
    patience: int = option(2, "epochs without a lower validation loss before it stops, >= 1")
    valid: float = option(0.2, "share of the reference's data that decides its early stopping")
    ref_lr: float = option(1e-3, "the reference's Adam learning rate, > 0")
    ref_batch: int = option(128, "the reference's training batch, >= 1")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.holdout <= 0.5:
            raise ValueError(f"invalid holdout={self.holdout!r}: must be in (0, 0.5]")
        if not 0 < self.valid <= 0.5:
            raise ValueError(f"invalid valid={self.valid!r}: must be in (0, 0.5]")
        for name in ("ref_epochs", "patience", "ref_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"invalid {name}={getattr(self, name)!r}: must be >= 1")
        if not self.ref_lr > 0:
            raise ValueError(f"invalid ref_lr={self.ref_lr!r}: must be > 0")

    def backprop_fraction(self, context: RunContext) -> None:
        """Measured: early stopping decides what the reference model costs."""
        return None

    def check(self, context: RunContext) -> None:
        if self.ref_model is not None and context.input_shape:
            from sievetrain.models import check_model

            check_model(
                self.ref_model, num_classes=context.num_classes, input_shape=context.input_shape
            )


@dataclass(frozen=True)
class ReferencePlan:
    """Which samples train, validate and are scored by each reference model, and which
    the run must not train on (``held_out``, bool (N,))."""

    train: tuple[Tensor, ...]
    valid: tuple[Tensor, ...]
    score: tuple[Tensor, ...]
    held_out: Tensor


def plan_reference(
    n: int,
    layout: Layout,
    *,
    holdout: float,
    valid: float,
    seed: int,
    pool: Tensor | None = None,
) -> ReferencePlan:
    """The split of ``n`` training samples for ``layout`` (see the module docstring).

    ``pool`` (bool (N,)) marks the samples a ``holdout`` reference may train on (all
    by default); a twin uses every sample. Each model's data is split ``valid`` : rest
    into its early-stopping and training parts.

    Raises:
        ValueError: too few samples for a training and a validation part.
    """
    generator = make_generator(seed, "reference-plan")
    if layout == "twin":
        order = torch.randperm(n, generator=generator)
        halves = (order[: n // 2], order[n // 2 :])
        parts = [_split(half, valid, f"a twin's half of {n}") for half in halves]
        score = (halves[1].sort().values, halves[0].sort().values)
        held_out = torch.zeros(n, dtype=torch.bool)
    else:
        allowed = torch.arange(n) if pool is None else pool.nonzero().squeeze(1)
        count = max(round(holdout * len(allowed)), 2)
        chosen = allowed[torch.randperm(len(allowed), generator=generator)[:count]]
        if len(chosen) < 2:
            raise ValueError(f"holdout={holdout} leaves {len(chosen)} samples to train on")
        parts = [_split(chosen, valid, f"the holdout ({len(chosen)} samples)")]
        held_out = torch.zeros(n, dtype=torch.bool)
        held_out[chosen] = True
        score = ((~held_out).nonzero().squeeze(1),)
    return ReferencePlan(
        train=tuple(p[1] for p in parts),
        valid=tuple(p[0] for p in parts),
        score=score,
        held_out=held_out,
    )


def _split(indices: Tensor, valid: float, what: str) -> tuple[Tensor, Tensor]:
    count = min(max(math.ceil(valid * len(indices)), 1), len(indices) - 1)
    if count < 1:
        raise ValueError(f"{what} is too small to split into training and validation parts")
    return indices[:count].sort().values, indices[count:].sort().values


class ReferencePhase:
    """Trains the reference model(s) of a :class:`ReferencePlan`, one epoch per
    :meth:`advance`, then scores; ``losses`` holds one loss per training sample (per
    token with ``per_token``) once :attr:`done`, 0 where the sample was not scored.

    Args:
        plan: the split (:func:`plan_reference`).
        options: the :class:`ReferenceOptions` (epochs, patience, learning rate, batch).
        seed: seeds the data order and torch's stream (dropout) of each epoch.
        build: makes a reference model; None: a copy of the run's model as
            :meth:`advance` first receives it (its initial weights).
        per_token: keep each target's loss (Rho-1) rather than each sample's mean.
    """

    def __init__(
        self,
        plan: ReferencePlan,
        options: ReferenceOptions,
        *,
        seed: int,
        build: Callable[[], nn.Module] | None = None,
        per_token: bool = False,
    ) -> None:
        self.plan, self.options, self.seed = plan, options, seed
        self.build, self.per_token = build, per_token
        self.member = 0  # the reference model in training (twin: 0 then 1)
        self.epoch = 0  # its epochs done
        self.best_loss = math.inf
        self.stale = 0  # its epochs since the validation loss last fell
        self.losses: Tensor | None = None  # the finished scores
        self.samples_backpropagated = 0
        self.samples_scored = 0  # forward passes without gradients (validation, scoring)
        self.validation: list[list[float]] = [[] for _ in plan.train]  # per model, per epoch
        self.kept: list[dict[str, Tensor]] = []  # the best weights of each finished model
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._best: dict[str, Tensor] | None = None
        self._saved: dict[str, Any] | None = None  # a loaded model and optimizer state

    @property
    def done(self) -> bool:
        return self.losses is not None

    def advance(self, model: nn.Module, dataset: Dataset) -> int | None:
        """One epoch of the reference model in training (the scoring pass after the
        last), with ``model`` the run's model (the default architecture); returns the
        samples backpropagated (0 for the scoring pass), None once :attr:`done`."""
        if self.done:
            return None
        if self.member == len(self.plan.train):
            self._score(model, dataset)
            return 0
        reference = self._reference(model)
        device = next(reference.parameters()).device
        order = self.plan.train[self.member]
        generator = make_generator(self.seed, "reference-order", self.member, self.epoch)
        order = order[torch.randperm(len(order), generator=generator)]
        with torch.random.fork_rng(devices=rng_devices(device)):
            torch.manual_seed(derive_seed(self.seed, "reference-torch", self.member, self.epoch))
            reference.train()
            loader = make_loader(dataset, self.options.ref_batch, sampler=order.tolist())
            for x, y, _ in loader:
                loss = batch_loss(reference(x.to(device)), y.to(device))
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._optimizer.step()
        self.epoch += 1
        self.samples_backpropagated += len(order)
        loss = self._validate(reference, dataset, device)
        self.validation[self.member].append(loss)
        if loss < self.best_loss or self._best is None:
            self.best_loss, self.stale = loss, 0
            self._best = _clone(reference.state_dict())
        else:
            self.stale += 1
        if self.epoch >= self.options.ref_epochs or self.stale >= self.options.patience:
            self._finish_member()
        return len(order)

    def _new(self, model: nn.Module) -> nn.Module:
        """A reference model on ``model``'s device: built, or a copy of ``model``."""
        if self.build is None:
            return copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]):  # the initial weights from the seed
            torch.manual_seed(derive_seed(self.seed, "reference-init", self.member))
            reference = self.build()
        return reference.to(next(model.parameters()).device)

    def _reference(self, model: nn.Module) -> nn.Module:
        """The model in training: built (and given a loaded state) on first use."""
        if self._model is None:
            self._model = self._new(model)
            self._optimizer = torch.optim.Adam(self._model.parameters(), lr=self.options.ref_lr)
            if self._saved is not None:
                self._model.load_state_dict(self._saved["model"])
                self._optimizer.load_state_dict(self._saved["optimizer"])
                self._saved = None
        return self._model

    def _finish_member(self) -> None:
        """Keep the best weights of the model just trained and move to the next."""
        self.kept.append(self._best)
        self._model = self._optimizer = self._best = None
        self.member += 1
        self.epoch, self.best_loss, self.stale = 0, math.inf, 0

    def _validate(self, reference: nn.Module, dataset: Dataset, device: torch.device) -> float:
        indices = self.plan.valid[self.member]
        total = 0.0
        for losses in self._forward(reference, dataset, indices, device, per_token=False):
            total += float(losses.double().sum())
        self.samples_scored += len(indices)
        return total / len(indices)

    def _forward(self, reference, dataset, indices, device, *, per_token: bool):
        """Each batch's losses over ``indices``, in evaluation mode, without gradients."""
        loader = make_loader(dataset, self.options.ref_batch, sampler=indices.tolist())
        with scoring_mode(reference), torch.no_grad():
            for x, y, _ in loader:
                logits = reference(x.to(device))
                y = y.to(device)
                yield (token_losses(logits, y) if per_token else sample_losses(logits, y)).cpu()

    def _score(self, model: nn.Module, dataset: Dataset) -> None:
        """Every scored sample's loss under its reference model, identical on every rank."""
        losses = None
        for best, indices in zip(self.kept, self.plan.score, strict=True):
            reference = self._new(model)
            reference.load_state_dict(best)
            device = next(reference.parameters()).device
            parts = list(
                self._forward(reference, dataset, indices, device, per_token=self.per_token)
            )
            scored = torch.cat(parts) if parts else torch.empty(0)
            if losses is None:
                losses = scored.new_zeros((len(self.plan.held_out), *scored.shape[1:]))
            losses[indices] = scored.to(losses.dtype)
            self.samples_scored += len(indices)
        broadcast_tensors([losses])  # rank 0's, bit for bit, should devices differ
        self.losses = losses.float()
        self.kept = []  # scored: the weights are no longer needed

    def stats(self) -> dict[str, Any]:
        return {
            "samples_reference_backpropagated": self.samples_backpropagated,
            "samples_scored": self.samples_scored,
            "reference_validation_loss": [list(v) for v in self.validation],
        }

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "member": self.member,
            "epoch": self.epoch,
            "best_loss": self.best_loss,
            "stale": self.stale,
            "samples_backpropagated": self.samples_backpropagated,
            "samples_scored": self.samples_scored,
            "validation": [list(v) for v in self.validation],
            "losses": None if self.losses is None else self.losses.clone(),
            "kept": [_clone(s) for s in self.kept],
            "best": None if self._best is None else _clone(self._best),
            "model": None,
            "optimizer": None,
        }
        if self._model is not None:
            state["model"] = _clone(self._model.state_dict())
            state["optimizer"] = copy.deepcopy(self._optimizer.state_dict())
        elif self._saved is not None:
            state["model"], state["optimizer"] = self._saved["model"], self._saved["optimizer"]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.member, self.epoch = state["member"], state["epoch"]
        self.best_loss, self.stale = state["best_loss"], state["stale"]
        self.samples_backpropagated = state["samples_backpropagated"]
        self.samples_scored = state["samples_scored"]
        self.validation = [list(v) for v in state["validation"]]
        self.losses = None if state["losses"] is None else state["losses"].clone()
        self.kept = [_clone(s) for s in state["kept"]]
        self._best = None if state["best"] is None else _clone(state["best"])
        self._model = self._optimizer = None
        self._saved = None
        if state["model"] is not None:
            self._saved = {"model": state["model"], "optimizer": state["optimizer"]}


def _clone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}
