"""InfoBatch (Qin et al., ICLR 2024, "InfoBatch: Lossless Training Speed Up by Unbiased
Dynamic Data Pruning"): drop some well-learned samples each epoch, upweight the rest.

Every sample's score is the loss it had in its latest training forward pass (all equal
at the start). Before each epoch, each sample whose score is strictly below the mean
score is dropped with probability P (``prune``), and the kept ones among them have
their loss weighted by 1/(1 - P), so that the epoch's expected gradient is full data's.
From epoch δ·E on (``delta``; E the run's epochs) every epoch is full data with unit
weights ("annealing"), to remove what bias remains before the run ends.

Functional core: :func:`infobatch_plan` (one epoch's indices and weights from the
scores) and :func:`annealing_start`. Stateful wrapper: :class:`InfoBatchSampler`, which
keeps the scores, plans each epoch once from the scores at its start, and serialises;
under ``torchrun`` it merges the ranks' losses so that every rank prunes alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from sievetrain.distributed import all_reduce, world
from sievetrain.options import Options, RunContext, option
from sievetrain.rng import make_generator
from sievetrain.sampling.base import (
    EpochSampler,
    as_int,
    check_ranks,
    check_same_config,
    shard,
)
from sievetrain.sampling.srs import soft_random_indices

__all__ = ["InfoBatchOptions", "InfoBatchSampler", "annealing_start", "infobatch_plan"]


@dataclass(frozen=True)
class InfoBatchOptions(Options):
    """InfoBatch's options: the keywords of :class:`InfoBatchSampler` and
    :func:`infobatch_plan`, and the options of the ``infobatch`` method."""

    prune: float = option(
        0.5, "P: probability of dropping a sample whose loss is below the mean, in (0, 1)"
    )
    delta: float = option(
        0.875, "δ: prune before epoch δ·E, then full data with unit weights; in (0, 1]"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.prune < 1:  # NaN lands here too
            raise ValueError(f"prune must be a number in (0, 1), got {self.prune!r}")
        if not 0 < self.delta <= 1:
            raise ValueError(f"delta must be a number in (0, 1], got {self.delta!r}")

    def check(self, context: RunContext) -> None:
        _Plan(n=context.n, epochs=context.epochs, seed=context.seed, **self.to_dict())

    def backprop_fraction(self, context: RunContext) -> float | None:
        """None: how many samples fall below the mean loss only a run can tell."""
        return None


@dataclass(frozen=True, kw_only=True)
class _Plan(InfoBatchOptions):
    """Options and the run they prune for (the sampler's ``state_dict()["config"]``)."""

    n: int
    epochs: int
    seed: int
    num_replicas: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        as_int("n", self.n, 1)
        as_int("epochs", self.epochs, 1)
        check_ranks(self.num_replicas, self.rank, self.n)


def annealing_start(epochs: int, delta: float) -> int:
    """First annealing epoch (0-based): the least e with ``e >= delta * epochs``.

    Exact arithmetic on the decimal ``delta`` prints as, so 0.875 * 8 is 7, not a
    double a hair above or below it. ``delta = 1``: ``epochs``, i.e. never anneals.
    """
    return math.ceil(Fraction(repr(float(delta))) * as_int("epochs", epochs, 1))


def _epoch_plan(plan: _Plan, scores: Tensor, epoch: int) -> tuple[Tensor, Tensor | None]:
    """:func:`infobatch_plan` for a checked plan: O(n), two randperms and one rand."""
    order = soft_random_indices(plan.n, 1.0, seed=plan.seed, epoch=epoch)  # full data's order
    if epoch >= annealing_start(plan.epochs, plan.delta):
        return order, None
    scores = scores.detach().to("cpu", torch.float64)  # float64: n equal scores are not below
    below = scores < scores.mean()  # (n,) "well learned"
    draws = torch.rand(plan.n, generator=make_generator(plan.seed, "infobatch", epoch))
    pruned = below & (draws < plan.prune)  # (n,) each below-mean sample w.p. P
    indices = order[~pruned[order]]  # full data's order, pruned samples left out
    rescaled = below & ~pruned
    if not bool(rescaled.any()):
        return indices, None
    weights = torch.ones(plan.n, dtype=torch.float32)
    weights[rescaled] = 1 / (1 - plan.prune)
    return indices, weights


def _merged_scores(scores: Tensor, observed: Tensor) -> Tensor:
    """Every rank's ``scores (n,)``, merged over the process group with one all-reduce:
    a sample's mean score over the ranks that ``observed (n,)`` it (ranks train disjoint
    shares, so that is the one rank's loss, exactly), its own score where none did."""
    mine = torch.stack([torch.where(observed, scores, 0.0), observed.to(scores.dtype)])  # (2, n)
    total, count = all_reduce(mine).unbind()  # (n,) sums over ranks
    return torch.where(count > 0, total / count.clamp(min=1), scores)


def infobatch_plan(
    scores: Tensor,
    *,
    prune: float = InfoBatchOptions.prune,
    delta: float = InfoBatchOptions.delta,
    epoch: int,
    epochs: int,
    seed: int,
) -> tuple[Tensor, Tensor | None]:
    """One epoch of InfoBatch: which samples train, in what order, with what loss weight.

    Args:
        scores: ``(n,)`` each sample's latest training loss (any float dtype or device).
        prune: P in (0, 1): each sample with a score strictly below the mean of all n
            scores is dropped with probability P, independently (stream ``(seed,
            "infobatch", epoch)``, one uniform draw per sample).
        delta: δ in (0, 1]: epochs ``e >= δ·epochs`` (see :func:`annealing_start`) prune
            nothing and weigh nothing; δ = 1 never anneals.
        epoch: Epoch number, >= 0.
        epochs: The run's epochs E, >= 1.
        seed: Run seed.

    The order is full data's for the epoch (``soft_random_indices(n, 1.0, seed=seed,
    epoch=epoch)``, stream ``(seed, "order", epoch)``) with the pruned samples left
    out: a uniformly random order of the kept samples, and exactly the ``full``
    baseline's epoch when nothing is pruned (equal scores, or annealing). The output
    is a pure function of (scores, prune, delta, epoch, epochs, seed).

    Returns:
        ``(indices, weights)``: int64 indices in training order; float32 ``(n,)``
        weights, 1/(1 - P) on the kept below-mean samples and 1 elsewhere, or None when
        no sample is rescaled (annealing, nothing below the mean, or all of it pruned).

    Raises:
        ValueError: any bad argument; the message names the bad value.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be one-dimensional (n,), got shape {tuple(scores.shape)}")
    plan = _Plan(n=scores.numel(), prune=prune, delta=delta, epochs=epochs, seed=seed)
    return _epoch_plan(plan, scores, as_int("epoch", epoch, 0))


class InfoBatchSampler(EpochSampler):
    """InfoBatch as an epoch-level ``Sampler`` that learns its scores from training losses.

    Each epoch: ``set_epoch(epoch)``; ``len(sampler)`` or the first ``iter`` plans the
    epoch once, with :func:`infobatch_plan`, from the scores at that moment; then, for
    each batch of indices ``idx`` it yields, the trainer computes the per-sample losses
    ``l = sievetrain.losses.sample_losses(logits, y)`` (token tasks: each sample's mean
    over its predicted tokens) and

    - weighs them: ``loss = (w * l).mean()`` with ``w = sample_weights(idx)`` (all ones
      when None), divided by the batch size and not by ``w.sum()``: the paper's unbiased
      rescaling, which keeps the expected epoch gradient that of full data;
    - feeds them back: ``observe_losses(idx, l)``, which become those samples' scores
      for the next epochs' plans (this epoch's plan does not change).

    Samples pruned in an epoch keep their older score. All scores start at 1, so the
    first epoch prunes nothing and yields exactly the ``full`` baseline's order.

    Args:
        n: Dataset size, >= 1.
        prune: P in (0, 1), see :class:`InfoBatchOptions`.
        epochs: The run's epochs E, >= 1 (annealing starts at epoch δ·E).
        delta: δ in (0, 1].
        seed: Run seed (drop draws ``(seed, "infobatch", epoch)``, order ``(seed,
            "order", epoch)``); the global RNGs are never touched.
        num_replicas: Ranks sharing the epoch; default: the process group's size when the
            first epoch is planned (see :class:`~sievetrain.sampling.EpochSampler`), so the
            sampler may be built before the group starts.
        rank: This rank; default: the process group's, likewise.

    Ranks: every rank plans the same global epoch and trains positions
    ``rank::num_replicas`` of it, cut to a multiple of ``num_replicas`` (lockstep). Each
    rank observes only its share's losses, so in a process group of several ranks the
    ranks' observations are merged (one all-reduce) right before an epoch is planned and
    in ``state_dict()``: every rank prunes from every rank's losses, as one process fed
    all of them would. Contract: every rank calls ``len``, ``iter``, ``sample_weights``,
    ``state_dict`` and ``load_state_dict`` in the same order (they may run a collective);
    ``observe_losses`` is local and cheap. One process runs no collective.

    ``state_dict()`` holds the scores and the current epoch's global plan, so a mid-epoch
    resume yields the rest of the epoch with the same weights, and later epochs as an
    uninterrupted run fed the same losses; rank 0's state loads on every rank. A
    ``DataLoader`` with workers pulls indices ahead of training; a trainer checkpointing
    mid-epoch should overwrite ``state["position"]`` with the samples it consumed.
    """

    observes_losses = True  # the trainer feeds observe_losses(idx, losses) every batch

    def __init__(
        self,
        n: int,
        prune: float = InfoBatchOptions.prune,
        *,
        epochs: int,
        delta: float = InfoBatchOptions.delta,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(num_replicas, rank)
        run = {"n": n, "epochs": epochs, "seed": seed, **self._current_ranks()}
        self._plan = _Plan(prune=prune, delta=delta, **run)
        self._scores = torch.ones(n, dtype=torch.float32)  # (n,) latest training loss
        self._observed = torch.zeros(n, dtype=torch.bool)  # (n,) scored since the last merge
        self._global: Tensor | None = None  # (k,) this epoch's plan, every rank's indices
        self._weights: Tensor | None = None  # (n,) this epoch's, set with the cached indices
        self._pruned: dict[int, int] = {}  # epoch -> samples pruned
        self._restored: tuple[int, Tensor, Tensor | None] | None = None  # from load_state_dict

    @property
    def options(self) -> InfoBatchOptions:
        return InfoBatchOptions.of(self._plan)

    @property
    def scores(self) -> Tensor:
        """A copy of every sample's current score, ``(n,)`` float32 (with several ranks,
        this rank's view: other ranks' losses arrive at the next merge)."""
        return self._scores.clone()

    def observe_losses(self, idx: Tensor, losses: Tensor) -> None:
        """Record ``losses (B,)``, from a training forward pass, as the scores of ``idx (B,)``."""
        idx = torch.as_tensor(idx).reshape(-1).to("cpu", torch.long)
        losses = losses.detach().reshape(-1).to("cpu", torch.float32)
        if idx.numel() != losses.numel():
            raise ValueError(f"{idx.numel()} indices but {losses.numel()} losses")
        self._scores[idx] = losses
        self._observed[idx] = True

    def _merge_observations(self) -> None:
        """Every rank's losses since the last merge, on every rank (a collective when the
        process group has several ranks; nothing to do in one process)."""
        if world()[0] > 1:
            self._scores = _merged_scores(self._scores, self._observed)
        self._observed.zero_()

    def _compute_indices(self, epoch: int) -> Tensor:
        plan = self._resolved_plan()
        if self._restored is not None and self._restored[0] == epoch:
            _, self._global, self._weights = self._restored  # planned before the checkpoint
        else:
            self._merge_observations()
            self._global, self._weights = _epoch_plan(plan, self._scores, epoch)
        self._restored = None
        self._pruned[epoch] = plan.n - self._global.numel()
        return shard(self._global, plan.num_replicas, plan.rank)

    def sample_weights(self, idx: Tensor) -> Tensor | None:
        """Loss weight of each dataset index in ``idx`` this epoch (CPU float32); None: all 1."""
        self._indices()  # plans the epoch if not yet done, setting self._weights with it
        if self._weights is None:
            return None
        return self._weights[torch.as_tensor(idx).to("cpu", torch.long)]

    def stats(self) -> dict:
        """Samples pruned over the run (from the global plans), and per epoch in epoch order."""
        per_epoch = [self._pruned[e] for e in sorted(self._pruned)]
        return {"pruned": sum(per_epoch), "pruned_per_epoch": per_epoch}

    def state_dict(self) -> dict:
        """Config, epoch, position, scores (every rank's losses, merged), this epoch's global
        plan and the pruning log."""
        self._indices()  # plans the epoch if not yet done
        self._merge_observations()
        return {
            "config": self.config,
            "epoch": self.epoch,
            "position": self.position,
            "scores": self._scores.clone(),
            "indices": self._global.clone(),
            "weights": None if self._weights is None else self._weights.clone(),
            "pruned": dict(self._pruned),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore scores and the epoch's plan; the next ``__iter__`` resumes at ``position``.
        Any rank's state loads on every rank; one saved before ranks existed has one rank.

        Raises:
            ValueError: the saved config differs from this sampler's, or the state is invalid.
        """
        check_same_config(self.config, state["config"])
        scores = state["scores"]
        if tuple(scores.shape) != (self._plan.n,):
            raise ValueError(
                f"state has scores of shape {tuple(scores.shape)}, not ({self._plan.n},)"
            )
        weights = state["weights"]
        self._scores = scores.to(torch.float32).clone()
        self._observed.zero_()
        self._pruned = {int(e): int(k) for e, k in state["pruned"].items()}
        epoch = as_int("epoch", state["epoch"], 0)
        self._restored = (
            epoch,
            state["indices"].clone(),
            None if weights is None else weights.clone(),
        )
        self.load_position(epoch, state["position"])
