"""GRAD-MATCH, per-batch, with warm start (Killamsetty et al., ICML 2021).

Every few epochs, choose the weighted set of mini-batches whose weighted last-layer
gradient best matches the full data's, by orthogonal matching pursuit with
non-negative weights; train on those batches' samples with the weights in the loss.
This is the coreset baseline Soft Random Sampling is measured against.

Functional core: :func:`~sievetrain.sampling.last_layer.shared_batch_gradients`
(closed form, split over ranks), :func:`~sievetrain.sampling.omp.nonnegative_omp`,
:func:`warm_start_schedule`, :func:`gradmatch_select`. Stateful
wrapper: :class:`GradMatchSampler`.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sievetrain import distributed
from sievetrain.options import Options, RunContext, option
from sievetrain.rng import make_generator
from sievetrain.sampling.base import (
    EpochSampler,
    as_int,
    check_ranks,
    check_same_config,
    shard,
)
from sievetrain.sampling.last_layer import scoring_block, shared_batch_gradients
from sievetrain.sampling.omp import check_omp_options, nonnegative_omp
from sievetrain.sampling.reshard import check_not_sharded_again
from sievetrain.sampling.srs import batch_partition, selection_round, subset_size
from sievetrain.sampling.srs import soft_random_indices as _full_data_indices

__all__ = [
    "GradMatchOptions",
    "GradMatchSampler",
    "gradmatch_select",
    "warm_start_schedule",
]


@dataclass(frozen=True)
class GradMatchOptions(Options):
    """GRAD-MATCH's options: the keywords of :class:`GradMatchSampler`, the options of
    the ``gradmatch`` method."""

    ratio: float = option(0.3, "r: fraction of the full batches chosen, in (0, 1]")
    interval: int = option(1, "R: epochs of subset training between selections; 0 = select once")
    kappa: float = option(0.5, "κ: warm-start fraction in [0, 1): full, then skipped epochs")
    lam: float = option(0.0, "λ: OMP ridge regularisation, >= 0")
    eps: float = option(1e-6, "ε: OMP stops when the residual is below ε·‖target‖")
    match: bool = option(True, "false: random batches of weight 1 (ablation of the matching)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.ratio <= 1:  # NaN lands here too
            raise ValueError(f"ratio must be a number in (0, 1], got {self.ratio!r}")
        as_int("interval", self.interval, 0)
        if not 0 <= self.kappa < 1:
            raise ValueError(f"kappa must be in [0, 1), got {self.kappa!r}")
        check_omp_options(self.lam, self.eps)

    def backprop_fraction(self, context: RunContext) -> float:
        """Warm start included: its full-data epochs, then r of the data from the
        end of the skipped epochs on (about r in all, by the warm start's design).
        The selections' scoring passes are forward-only and not counted."""
        full, start = warm_start_schedule(context.epochs, self.kappa, self.ratio)
        return (full + (context.epochs - start) * self.ratio) / context.epochs

    def check(self, context: RunContext) -> None:
        _Plan(
            n=context.n,
            batch_size=context.batch_size,
            epochs=context.epochs,
            seed=context.seed,
            **self.to_dict(),
        )


def warm_start_schedule(epochs: int, kappa: float, ratio: float) -> tuple[int, int]:
    """``(full_epochs, subset_start)`` of GRAD-MATCH's warm start over ``epochs`` epochs.

    The first ``round(kappa * epochs * ratio)`` epochs train on the full data, the
    epochs up to ``floor(kappa * epochs)`` are skipped (no training), and subset
    training runs from there on, so that the total compute is ``ratio`` x that of
    full data, as without a warm start. ``kappa = 0``: no warm start, ``(0, 0)``.
    Rounding is half up, on the decimals the arguments print as.
    """
    epochs = as_int("epochs", epochs, 1)
    if isinstance(kappa, bool) or not 0 <= kappa < 1:
        raise ValueError(f"kappa must be in [0, 1), got {kappa!r}")
    start = math.floor(Fraction(repr(float(kappa))) * epochs)
    exact = Fraction(repr(float(kappa))) * epochs * Fraction(repr(float(ratio)))
    return min(math.floor(exact + Fraction(1, 2)), start), start


def gradmatch_select(
    columns: Tensor,
    budget: int,
    *,
    lam: float = GradMatchOptions.lam,
    eps: float = GradMatchOptions.eps,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Choose ``budget`` of the n batches whose gradients are ``columns (d, n)``.

    The target is ``budget`` times the mean batch gradient, so that a uniform random
    choice would have weights 1. OMP picks up to ``budget`` batches; if it stops
    early, uniformly random other batches (``generator``) fill the budget with weight 1,
    as the reference implementation does.

    Returns:
        ``(batches (budget,) int64, weights (budget,) float64 > 0, chosen_by_omp)``.
    """
    n = columns.shape[1]
    target = columns.mean(dim=1) * budget  # (d,)
    picked, weights = nonnegative_omp(columns, target, budget, lam=lam, eps=eps)
    keep = weights > 0
    picked, weights = picked[keep], weights[keep]
    rest = torch.ones(n, dtype=torch.bool)
    rest[picked] = False
    others = rest.nonzero().squeeze(1)
    fill = others[torch.randperm(len(others), generator=generator)[: budget - len(picked)]]
    batches = torch.cat([picked, fill])
    weights = torch.cat([weights, weights.new_ones(len(fill))])
    return batches, weights, len(picked)


@dataclass(frozen=True, kw_only=True)
class _Plan(GradMatchOptions):
    """Options and the run they select for (the sampler's ``state_dict()["config"]``)."""

    n: int
    batch_size: int  # the global batch: samples per optimizer step over all ranks
    epochs: int
    seed: int
    num_replicas: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        as_int("batch_size", self.batch_size, 1)
        as_int("n", self.n, self.batch_size)  # at least one full batch to choose
        least = self.budget * self.batch_size
        check_ranks(self.num_replicas, self.rank, least, f"ratio {self.ratio!r}: ")
        self.warm_start  # noqa: B018  (checks epochs)

    @functools.cached_property
    def warm_start(self) -> tuple[int, int]:
        """``(full_epochs, subset_start)``: see :func:`warm_start_schedule`."""
        return warm_start_schedule(self.epochs, self.kappa, self.ratio)

    @functools.cached_property
    def partition(self) -> tuple[Tensor, ...]:
        """The run's fixed batches: a ``(seed, "batches")`` permutation cut every batch."""
        return batch_partition(self.n, self.batch_size, seed=self.seed)

    @property
    def batches(self) -> int:
        """Candidate batches: the full batches of the run's fixed partition."""
        return self.n // self.batch_size

    @property
    def budget(self) -> int:
        """Batches chosen per selection: ``floor(ratio * batches + 0.5)``."""
        return subset_size(self.batches, self.ratio, unit="full batches")

    @property
    def ranks(self) -> dict:
        """``num_replicas`` and ``rank``, as keywords."""
        return {"num_replicas": self.num_replicas, "rank": self.rank}

    def round(self, epoch: int) -> int | str:
        """The selection round of ``epoch``, ``"full"`` or ``"skip"`` (warm start)."""
        if self.ratio == 1:
            return "full"
        full, start = self.warm_start
        if epoch < start:
            return "full" if epoch < full else "skip"
        return selection_round(epoch, interval=self.interval, warm_start_epochs=start)


class GradMatchSampler(EpochSampler):
    """GRAD-MATCH per-batch as an epoch-level ``Sampler``, with its sample weights.

    Call ``set_epoch(epoch)`` then ``refresh(model, dataset)`` before each epoch:
    refresh runs a selection when the epoch starts a new round (every ``interval``
    epochs of subset training) and is free otherwise. ``sample_weights(idx)`` gives
    the loss weight of each yielded index (None on a full-data epoch); the trainer
    weights the loss by them (:func:`sievetrain.losses.batch_loss`).

    Args:
        n: Dataset size; at least ``batch_size``.
        ratio: Subset ratio r in (0, 1]: ``floor(r * B + 0.5)`` of the ``B = n //
            batch_size`` full batches of a fixed ``(seed, "batches")`` partition.
            ``ratio=1`` is full data (nothing to choose).
        batch_size: Samples per candidate batch: the GLOBAL training batch (samples
            per optimizer step over all ranks; each rank's loader takes its share).
        epochs: The run's epochs E, for the warm-start schedule.
        seed: Run seed (partition, order, random fill).
        num_replicas: Ranks that train (the torchrun world size); default: the
            process group's size (1 without one) when the first epoch is planned (see
            :class:`~sievetrain.sampling.EpochSampler`): the sampler may be built before
            the group starts.
        rank: This rank, in ``[0, num_replicas)``; default: the process group's, likewise.
        **options: the other fields of :class:`GradMatchOptions`: ``interval`` (R,
            epochs between selections; 0 selects once), ``kappa`` (κ, see
            :func:`warm_start_schedule`), ``lam`` (λ) and ``eps`` (ε) of the OMP, and
            ``match``: False replaces the gradient matching by uniformly random
            batches with weight 1 (an ablation: the same warm start and schedule, no
            gradients, no OMP), to tell what the matching itself buys.

    A subset epoch's global order is the chosen batches' samples reshuffled (stream
    ``(seed, "order", epoch)``); a full-data epoch's is exactly what the ``full``
    baseline yields. The fewer-than-``batch_size`` samples left over by the partition
    are never chosen.

    Data parallel: one selection for all ranks, every rank calling ``refresh`` at once
    (with its model, DDP-wrapped or not: the scoring passes run on the inner module, no
    DDP collectives). Each rank scores a contiguous ``1/num_replicas`` block of the
    candidate batches and the ranks all-gather the gradients, so scoring time per rank
    drops about ``num_replicas`` x; rank 0 runs the OMP and broadcasts its choice, so
    the batches and weights are the same on every rank by construction, whatever the
    floating-point behaviour of each rank's BLAS. Each rank yields positions
    ``rank::num_replicas`` of the global order cut to a multiple of ``num_replicas``
    (the last ``< num_replicas`` samples are dropped): every rank runs as many steps.
    A state saved on any rank loads on every rank.
    """

    def __init__(
        self,
        n: int,
        ratio: float = GradMatchOptions.ratio,
        *,
        batch_size: int,
        epochs: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(num_replicas, rank)
        run = {"n": n, "batch_size": batch_size, "epochs": epochs, "seed": seed}
        self._plan = _Plan(ratio=ratio, **self._current_ranks(), **run, **options)
        self._round: int | None = None  # round the current subset was selected for
        self._batches = torch.zeros(0, dtype=torch.long)  # chosen batch ids
        self._batch_weights = torch.zeros(0, dtype=torch.float64)
        self._weights = torch.zeros(0)  # (n,) per-sample loss weight, from the two above
        # Per selection: epoch, seconds, batches OMP chose, batches this rank scored.
        self.selections: list[dict] = []

    @property
    def options(self) -> GradMatchOptions:
        return GradMatchOptions.of(self._plan)

    def refresh(
        self, model: nn.Module, dataset: Dataset, *, layer: nn.Module | None = None
    ) -> None:
        """Select the subset for the current epoch if its round has none yet (on every
        rank at once when ``num_replicas > 1``: the ranks exchange gradients)."""
        plan = self._resolved_plan()
        r = plan.round(self.epoch)
        if not isinstance(r, int) or r == self._round:
            return
        start = time.perf_counter()
        fill = make_generator(plan.seed, "gradmatch-fill", r)
        if plan.match:
            batches, weights, by_omp = self._match(distributed.unwrap(model), dataset, layer, fill)
            scored = len(scoring_block(plan.batches, **plan.ranks))
        else:  # the ablation: all of the budget is "fill", drawn alike on every rank
            batches = torch.randperm(plan.batches, generator=fill)[: plan.budget]
            weights, by_omp, scored = torch.ones(plan.budget, dtype=torch.float64), 0, 0
        self._set_subset(r, batches, weights)
        seconds = time.perf_counter() - start  # the weights are on the CPU: work is done
        log = {"epoch": self.epoch, "seconds": seconds, "omp_batches": by_omp}
        self.selections.append(log | {"scored_batches": scored})

    def _match(
        self, model: nn.Module, dataset: Dataset, layer: nn.Module | None, fill: torch.Generator
    ) -> tuple[Tensor, Tensor, int]:
        """:func:`gradmatch_select` on every candidate's gradient: rank 0's choice."""
        plan = self._plan
        candidates = list(plan.partition[: plan.batches])
        columns = shared_batch_gradients(model, dataset, candidates, layer=layer, **plan.ranks)
        # One solver, its answer sent: equal inputs are not enough for equal outputs (MKL's
        # least squares is not even bitwise repeatable), and a rank that chose otherwise
        # would train other samples, or a different number of steps and hang.
        choice = None
        if plan.rank == 0:
            choice = gradmatch_select(
                columns, plan.budget, lam=plan.lam, eps=plan.eps, generator=fill
            )
        return choice if plan.num_replicas == 1 else distributed.broadcast_object(choice)

    def sample_weights(self, idx: Tensor) -> Tensor | None:
        """Loss weight of each dataset index in ``idx`` this epoch; None: all equal."""
        return None if self._plan.round(self.epoch) in ("full", "skip") else self._weights[idx]

    def stats(self) -> dict:
        seconds = [s["seconds"] for s in self.selections]
        return {
            "selections": len(seconds),
            "selection_time_s": sum(seconds),
            "per_selection": self.selections,
        }

    def __len__(self) -> int:  # known before the selection (a step schedule needs it)
        check_not_sharded_again(self)
        plan = self._resolved_plan()
        r = plan.round(self.epoch)
        if r == "skip":
            return 0
        total = plan.n if r == "full" else plan.budget * plan.batch_size  # all ranks'
        return total // plan.num_replicas

    def _compute_indices(self, epoch: int) -> Tensor:
        plan = self._resolved_plan()
        r = plan.round(epoch)
        if r == "full":
            return _full_data_indices(plan.n, 1.0, seed=plan.seed, epoch=epoch, **plan.ranks)
        if r == "skip":
            return torch.zeros(0, dtype=torch.long)
        if r != self._round:
            raise RuntimeError(f"epoch {epoch} needs a selection: call refresh(model, dataset)")
        chosen = torch.cat([plan.partition[i] for i in self._batches.tolist()])
        order = torch.randperm(len(chosen), generator=make_generator(plan.seed, "order", epoch))
        return shard(chosen[order], **plan.ranks)

    def _set_subset(self, r: int | None, batches: Tensor, weights: Tensor) -> None:
        self._round, self._batches, self._batch_weights = r, batches, weights
        self._weights = torch.zeros(self._plan.n)
        for b, w in zip(batches.tolist(), weights.tolist(), strict=True):
            self._weights[self._plan.partition[b]] = w
        self.forget_indices()

    def state_dict(self) -> dict:
        """Config, epoch, position, the current subset and weights, the selection log."""
        return {
            "config": self.config,
            "epoch": self.epoch,
            "position": self.position,
            "round": self._round,
            "batches": self._batches.clone(),
            "batch_weights": self._batch_weights.clone(),
            "selections": [dict(s) for s in self.selections],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the subset and schedule; the next ``__iter__`` resumes at ``position``.

        Any rank's state loads on every rank (the selection is the same on all; the
        log's seconds are the saving rank's); a state saved before GRAD-MATCH knew
        ranks is a single-process one.
        """
        check_same_config(self.config, state["config"])
        self._set_subset(state["round"], state["batches"].clone(), state["batch_weights"].clone())
        self.selections = [dict(s) for s in state["selections"]]
        self.load_position(state["epoch"], state["position"])
