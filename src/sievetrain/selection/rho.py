"""Selection against a reference model: RHO-LOSS for samples, Rho-1 for tokens.

- **RHO-LOSS** (Mindermann et al., ICML 2022) backpropagates, of each candidate
  batch, the ``ratio`` of samples with the largest *reducible* loss: the run model's
  loss minus the *irreducible* loss, a reference model's loss on that sample. A
  mislabelled or unlearnable sample keeps a high loss under both models, so its
  reducible loss stays low and it is rarely trained; a plain high-loss rule (Selective
  Backprop) trains it more than its share.
- **Rho-1** (Lin et al., 2024) does the same per token: the loss of a training batch
  is the mean over the ``ratio`` of its predicted tokens with the largest excess loss
  over a reference model trained on target text.

The reference model is trained before the run (:mod:`sievetrain.selection.reference`,
through ``prepare``, on the training clock), and its losses for every training
sample are computed once, without augmentation, and kept in the selector's state.
Its costs are charged: its backward passes count in the run's
``samples_backpropagated``, its forward passes without gradients in
``samples_scored``, its time in the phase ``reference``.

Under ``DistributedDataParallel`` every rank trains the same reference model from
the same seed (its cost is charged once per rank), and the losses are broadcast from
rank 0, so every rank holds the same ones. Each rank then keeps the same number of
samples of each candidate batch (the smallest count over the ranks), so every rank
takes the same optimizer steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sievetrain.distributed import all_gather, all_reduce, unwrap, world
from sievetrain.losses import IGNORE_INDEX, sample_losses, token_losses
from sievetrain.options import RunContext, as_int, option
from sievetrain.scoring import scoring_mode
from sievetrain.selection.base import Selector, keep_count
from sievetrain.selection.reference import ReferenceOptions, ReferencePhase, plan_reference

__all__ = ["Rho1", "Rho1Options", "RhoLoss", "RhoLossOptions", "keep_tokens"]


@dataclass(frozen=True)
class RhoLossOptions(ReferenceOptions):
    """RHO-LOSS's options: the keywords of :class:`RhoLoss`, the options of the
    ``rho-loss`` method."""

    ratio: float = option(0.1, "fraction of each candidate batch backpropagated, in (0, 1]")
    candidates: int | None = option(
        None, "candidate batch, in training batches; none: floor(1/ratio) (10 at 0.1)"
    )
    reference: Literal["holdout", "twin"] = option(
        "holdout", "holdout: one model on `holdout` of the data; twin: two on halves"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.ratio <= 1:
            raise ValueError(f"invalid ratio={self.ratio!r}: must be in (0, 1]")
        if self.candidates is not None:
            if self.candidates < 1:
                raise ValueError(f"invalid candidates={self.candidates!r}: must be >= 1")
            if round(self.ratio * self.candidates, 9) > 1:
                raise ValueError(
                    f"invalid candidates={self.candidates!r}: ratio={self.ratio} of it keeps "
                    f"more than one training batch per candidate batch; at most "
                    f"{math.floor(round(1 / self.ratio, 9))}"
                )

    @property
    def candidate_batches(self) -> int:
        """Training batches per candidate batch."""
        if self.candidates is not None:
            return self.candidates
        return max(math.floor(round(1 / self.ratio, 9)), 1)


@dataclass(frozen=True)
class Rho1Options(ReferenceOptions):
    """Rho-1's options: the keywords of :class:`Rho1`, the options of the ``rho1``
    method."""

    ratio: float = option(0.6, "fraction of a batch's predicted tokens the loss keeps, in (0, 1]")

    needs_model = True  # check() reads the targets' shape

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.ratio <= 1:
            raise ValueError(f"invalid ratio={self.ratio!r}: must be in (0, 1]")

    def check(self, context: RunContext) -> None:
        if context.sample is not None and context.sample[1].dim() != 2:
            raise ValueError(
                "rho1 selects tokens and needs per-token targets (B, T), e.g. the masked "
                "language model; this task has one target per sample: use rho-loss"
            )
        super().check(context)


def keep_tokens(excess: Tensor, y: Tensor, ratio: float) -> Tensor:
    """``y`` with only the ``keep_count(predicted, ratio)`` predicted targets of largest
    ``excess`` (same shape as ``y``) left; the others become ``IGNORE_INDEX``."""
    predicted = (y != IGNORE_INDEX).flatten()
    k = keep_count(int(predicted.sum()), ratio)
    scores = excess.flatten().float().masked_fill(~predicted, -math.inf)
    keep = scores.topk(k).indices
    kept = torch.full_like(y.flatten(), IGNORE_INDEX)
    kept[keep] = y.flatten()[keep]
    return kept.view_as(y)


class _ReferenceSelector(Selector):
    """What RHO-LOSS and Rho-1 share: the reference phase, the samples it holds out."""

    accumulates = True  # held-out and dropped samples leave gaps: steps keep their size
    needs_index = True  # the reference losses are looked up by dataset index
    per_token = False
    options: ReferenceOptions
    layout: Literal["holdout", "twin"] = "holdout"

    def __init__(
        self,
        *,
        seed: int,
        reference_model: Callable[[], nn.Module] | None,
        pool: Tensor | None,
    ) -> None:
        self.seed = as_int("seed", seed)
        self.reference_model = reference_model
        self.pool = None if pool is None else torch.as_tensor(pool, dtype=torch.bool).cpu()
        self.phase: ReferencePhase | None = None
        self.samples_forwarded_no_grad = 0  # the run model's scoring passes

    def _begin(self, n: int) -> ReferencePhase:
        if self.pool is not None and len(self.pool) != n:
            raise ValueError(f"pool has {len(self.pool)} entries for a dataset of {n}")
        o = self.options
        plan = plan_reference(
            n, self.layout, holdout=o.holdout, valid=o.valid, seed=self.seed, pool=self.pool
        )
        return ReferencePhase(
            plan, o, seed=self.seed, build=self.reference_model, per_token=self.per_token
        )

    def prepare(self, model: nn.Module, dataset: Dataset) -> int | None:
        if self.phase is None:
            self.phase = self._begin(len(dataset))
        return self.phase.advance(model, dataset)

    @property
    def reference_losses(self) -> Tensor:
        """Each training sample's reference loss (per token for Rho-1)."""
        if self.phase is None or not self.phase.done:
            raise RuntimeError(
                f"{type(self).__name__} has no reference losses yet: call prepare(model, "
                f"dataset) until it returns None (Sieve.begin_epoch does)"
            )
        return self.phase.losses

    def _candidates(self, idx: Tensor) -> tuple[Tensor, int, int]:
        """Positions of the batch the run may train on; how many of them each rank may
        keep (this rank's count, or under DDP the smallest over the ranks); and how many
        all ranks have (the same figure on every rank, for a counter every rank keeps
        alike)."""
        self.reference_losses  # noqa: B018  (raises before the reference is trained)
        allowed = (~self.phase.plan.held_out[idx.cpu()]).nonzero().squeeze(1)
        if world()[0] == 1:
            return allowed, len(allowed), len(allowed)
        counts = all_gather(torch.tensor([len(allowed)]))
        return allowed, int(counts.min()), int(counts.sum())

    def stats(self) -> dict[str, Any]:
        held = 0 if self.phase is None else int(self.phase.plan.held_out.sum())
        scored = 0 if self.phase is None else self.phase.samples_scored
        # The run model's scoring count is every rank's (the state is the same on every
        # rank): rank 0 reports it, so that the sum over ranks counts it once.
        own = self.samples_forwarded_no_grad if world()[1] == 0 else 0
        return {
            "samples_forwarded_no_grad": own + scored,
            "samples_held_out": held,
            **({} if self.phase is None else self.phase.stats()),
        }

    def state_dict(self) -> dict[str, Any]:
        """The same on every rank (the reference is; the counter is every rank's)."""
        return {
            "epoch": self.epoch,
            "n": None if self.phase is None else len(self.phase.plan.held_out),
            "phase": None if self.phase is None else self.phase.state_dict(),
            "samples_forwarded_no_grad": self.samples_forwarded_no_grad,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_epoch(state["epoch"])
        self.samples_forwarded_no_grad = state["samples_forwarded_no_grad"]
        self.phase = None
        if state["n"] is not None:
            self.phase = self._begin(as_int("n", state["n"], 1))
            self.phase.load_state_dict(state["phase"])


class RhoLoss(_ReferenceSelector):
    """Backprop the ``ratio`` of each candidate batch with the largest reducible loss.

    Args:
        ratio: fraction of each candidate batch kept (:class:`RhoLossOptions`).
        seed: seeds the reference split, its training order and its initial weights.
        reference_model: makes the reference model; None: a copy of the run's model
            as ``prepare`` first receives it.
        **options: the other fields of :class:`RhoLossOptions` (``reference``,
            ``holdout``, ``candidates``, ``ref_epochs``, ...).

    A loop that uses it loads candidate batches of ``candidates`` training batches
    (the Trainer does) and gathers the kept samples into training batches
    (:class:`~sievetrain.Sieve` does). With ``reference="holdout"`` the held-out
    samples are never trained on.
    """

    def __init__(
        self,
        ratio: float = RhoLossOptions.ratio,
        *,
        seed: int = 0,
        reference_model: Callable[[], nn.Module] | None = None,
        **options: Any,
    ) -> None:
        self.options = RhoLossOptions(ratio=ratio, **options)
        self.layout = self.options.reference
        self.candidates = self.options.candidate_batches
        super().__init__(seed=seed, reference_model=reference_model, pool=None)

    def reducible_losses(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        """``loss(model) - loss(reference)`` of each sample (B,), without gradients."""
        model = unwrap(model)
        with scoring_mode(model), torch.no_grad():
            losses = sample_losses(model(x), y).float().cpu()
        return losses - self.reference_losses[idx.cpu()]

    def select(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        allowed, count, everyone = self._candidates(idx)
        k = keep_count(count, self.options.ratio)
        if k == 0:
            return torch.empty(0, dtype=torch.int64, device=y.device)
        where = allowed.to(y.device)
        reducible = self.reducible_losses(model, x[where], y[where], idx.cpu()[allowed])
        self.samples_forwarded_no_grad += everyone  # every rank's scoring pass
        top = reducible.topk(k).indices
        return allowed[top].sort().values.to(y.device)


class Rho1(_ReferenceSelector):
    """The loss of each training batch over the ``ratio`` of its predicted tokens with
    the largest excess loss over a reference model trained on target text.

    Args:
        ratio: fraction of a batch's predicted tokens kept (:class:`Rho1Options`).
        seed: seeds the reference split, its training order and its initial weights.
        reference_model: makes the reference model; None: a copy of the run's model.
        pool: bool (N,): the samples of target text the reference may train on (e.g.
            not ``off_target``); None: any. Its ``holdout`` share of them is then not
            trained on.
        flags: what each training sample is (name -> bool (N,), a data regime's): the
            share of the kept tokens each kind has is counted (``tokens_by_flag`` in
            :meth:`stats`), as the selection audit counts samples.
        **options: the other fields of :class:`Rho1Options`.

    No extra forward pass: the excess is read from the training step's own logits.
    The backward pass still runs through the whole model; only the tokens that reach
    the loss change.
    """

    per_token = True

    def __init__(
        self,
        ratio: float = Rho1Options.ratio,
        *,
        seed: int = 0,
        reference_model: Callable[[], nn.Module] | None = None,
        pool: Tensor | None = None,
        flags: Mapping[str, Tensor] | None = None,
        **options: Any,
    ) -> None:
        self.options = Rho1Options(ratio=ratio, **options)
        super().__init__(seed=seed, reference_model=reference_model, pool=pool)
        self.flags = {
            k: torch.as_tensor(v, dtype=torch.bool).cpu() for k, v in (flags or {}).items()
        }
        # Predicted and kept tokens: all, then of each flag's samples; every rank's.
        self.tokens = torch.zeros(1 + len(self.flags), 2, dtype=torch.long)

    def select(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        """Every sample but the held-out target slice (under DDP, the first of them up
        to the smallest count over the ranks)."""
        allowed, count, _ = self._candidates(idx)
        return allowed[:count].to(y.device)

    def targets(self, logits: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        reference = self.reference_losses[idx.cpu()].to(logits.device)
        excess = token_losses(logits, y) - reference
        kept = keep_tokens(excess, y, self.options.ratio)
        self._count(y, kept, idx.cpu())
        return kept

    def _count(self, y: Tensor, kept: Tensor, idx: Tensor) -> None:
        """Add the batch's predicted and kept tokens, of all samples and of each flag's,
        summed over the ranks (one all-reduce: every rank trains each step)."""
        seen = (y != IGNORE_INDEX).reshape(len(y), -1).sum(1).cpu()
        held = (kept != IGNORE_INDEX).reshape(len(y), -1).sum(1).cpu()
        rows = [torch.ones(len(y), dtype=torch.bool), *(f[idx] for f in self.flags.values())]
        counts = torch.stack([torch.stack([seen[r].sum(), held[r].sum()]) for r in rows])
        self.tokens += all_reduce(counts) if world()[0] > 1 else counts

    def stats(self) -> dict[str, Any]:
        seen, kept = self.tokens[0].tolist()
        by_flag = {
            name: {
                "share_of_tokens": row[0] / seen if seen else None,
                "share_of_kept_tokens": row[1] / kept if kept else None,
            }
            for name, row in zip(self.flags, self.tokens[1:].tolist(), strict=True)
        }
        return {
            **super().stats(),
            "tokens_seen": seen,  # every rank's (summed as they are counted)
            "tokens_kept": kept,
            "tokens_by_flag": by_flag,
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tokens": self.tokens.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        tokens = state["tokens"]
        if tokens.shape != self.tokens.shape:
            raise ValueError(
                f"a Rho-1 state counting {tokens.shape[0] - 1} flags does not fit one of "
                f"{self.tokens.shape[0] - 1}"
            )
        self.tokens = tokens.clone().long()
