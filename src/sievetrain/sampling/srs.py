"""Soft Random Sampling (arXiv 2311.12727): a fresh uniform random subset every few epochs."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import torch

from sievetrain.options import Options, RunContext, option
from sievetrain.rng import make_generator
from sievetrain.sampling.base import PlanSampler, as_int, check_ranks, shard

__all__ = [
    "SRSOptions",
    "SoftRandomSampler",
    "batch_partition",
    "selection_round",
    "soft_random_indices",
    "subset_size",
]


def subset_size(n: int, ratio: float, *, unit: str = "samples") -> int:
    """Subset size ``m = floor(ratio * n + 0.5)`` of ``n`` units (samples, batches): ``ratio * n``
    rounded half up.

    Exact arithmetic on the decimal the ratio prints as (its ``repr``: 0.3 means 3/10, not the
    double 0.29999999999999998...), so ``subset_size(15, 0.3) == 5``: 4.5 rounds up.

    Raises:
        ValueError: ``n <= 0`` (empty dataset), ``ratio`` NaN, ``<= 0`` or ``> 1``, or ``m == 0``.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
        raise ValueError(f"empty dataset: n must be a positive integer, got {n!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 1:
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")  # NaN lands here too
    size = int(Fraction(repr(float(ratio))) * n + Fraction(1, 2))  # exact floor(r*n + 1/2)
    if size == 0:
        raise ValueError(f"ratio {ratio!r} makes the subset empty for {n} {unit}")
    return size


def selection_round(epoch: int, *, interval: int = 1, warm_start_epochs: int = 0) -> int | None:
    """Round ``(epoch - warm_start_epochs) // interval``; always 0 if ``interval == 0``.

    Returns None for warm-start epochs (``epoch < warm_start_epochs``), which use the full data.
    """
    if epoch < warm_start_epochs:
        return None
    return 0 if interval == 0 else (epoch - warm_start_epochs) // interval


def batch_partition(n: int, batch_size: int, *, seed: int) -> tuple[torch.Tensor, ...]:
    """The run's fixed batches: a ``(seed, "batches")`` permutation cut every ``batch_size``."""
    permutation = torch.randperm(n, generator=make_generator(seed, "batches"))
    return permutation.split(batch_size)


@dataclass(frozen=True)
class SRSOptions(Options):
    """Soft Random Sampling's options: the keywords of :class:`SoftRandomSampler` and
    :func:`soft_random_indices`, and the options of the ``srs`` and ``fixed`` methods."""

    ratio: float = option(0.3, "r: fraction of the data an epoch trains on, in (0, 1]")
    interval: int = option(1, "R: epochs between fresh subsets; 0 = one subset for the whole run")
    within_epoch_replacement: bool = option(
        False, "true: m i.i.d. indices per epoch, which may repeat; false (paper): m distinct"
    )
    granularity: Literal["sample", "batch"] = option(
        "sample", "draw samples, or whole mini-batches of a fixed partition (as on CIFAR-10)"
    )
    warm_start_epochs: int = option(0, "leading epochs on the full data, before sampling starts")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.ratio <= 1:  # NaN lands here too
            raise ValueError(f"ratio must be a number in (0, 1], got {self.ratio!r}")
        as_int("interval", self.interval, 0)
        as_int("warm_start_epochs", self.warm_start_epochs, 0)

    def backprop_fraction(self, context: RunContext) -> float:
        """r after the warm start's full-data epochs: ``(W + (E - W) r) / E``."""
        warm = min(self.warm_start_epochs, context.epochs)
        return (warm + (context.epochs - warm) * self.ratio) / context.epochs

    def check(self, context: RunContext) -> None:
        _Plan(n=context.n, seed=context.seed, batch_size=context.batch_size, **self.to_dict())


@dataclass(frozen=True, kw_only=True)
class _Plan(SRSOptions):
    """Options and the run they sample for (the sampler's ``state_dict()["config"]``)."""

    n: int
    seed: int
    batch_size: int | None = None
    num_replicas: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        least = subset_size(self.n, self.ratio)  # checks n; fewest samples an epoch can have
        as_int("num_replicas", self.num_replicas, 1)  # before units_per_round divides by it
        if self.granularity == "batch":
            as_int("batch_size (needed for granularity='batch')", self.batch_size, 1)
            k, last = self.units_per_round, self.n - (self.units - 1) * self.batch_size
            # the short last batch chosen once (or k times, i.i.d.)
            least = k * last if self.within_epoch_replacement else (k - 1) * self.batch_size + last
        check_ranks(self.num_replicas, self.rank, least, f"ratio {self.ratio!r}: ")

    @property
    def units(self) -> int:
        """Selectable units: samples, or batches of the run's partition."""
        return self.n if self.granularity == "sample" else -(-self.n // self.batch_size)

    @property
    def units_per_round(self) -> int:
        """Units drawn per round; in sample mode rounded DOWN to a multiple of num_replicas."""
        if self.granularity == "batch":
            return subset_size(self.units, self.ratio, unit="batches")
        return subset_size(self.n, self.ratio) // self.num_replicas * self.num_replicas


def _epoch_indices(plan: _Plan, epoch: int) -> torch.Tensor:
    """This rank's indices for ``epoch``: cost O(n), one or two randperm calls."""
    order = make_generator(plan.seed, "order", epoch)
    s = selection_round(epoch, interval=plan.interval, warm_start_epochs=plan.warm_start_epochs)
    if s is None:  # warm start: every unit, fresh order
        chosen = torch.randperm(plan.units, generator=order)
    else:
        k, pick = plan.units_per_round, make_generator(plan.seed, "subset", s)
        if plan.within_epoch_replacement:
            subset = torch.randint(plan.units, (k,), generator=pick)
        else:
            subset = torch.randperm(plan.units, generator=pick)[:k]
        chosen = subset[torch.randperm(k, generator=order)]
    if plan.granularity == "batch":
        batches = batch_partition(plan.n, plan.batch_size, seed=plan.seed)  # fixed for the run
        chosen = torch.cat([batches[i] for i in chosen.tolist()])  # contents kept together
    # Lockstep ranks: drop the global tail (< num_replicas indices, warm start / batch mode only).
    return shard(chosen, plan.num_replicas, plan.rank)


def soft_random_indices(
    n: int,
    ratio: float = SRSOptions.ratio,
    *,
    seed: int,
    epoch: int,
    **options: Any,
) -> torch.Tensor:
    """Training indices of one rank for one epoch of Soft Random Sampling, in training order.

    Args:
        n: Dataset size.
        ratio: Subset ratio r in (0, 1]; ``m = subset_size(n, ratio)`` samples per epoch.
        seed: Run seed. Round s's subset comes from the stream ``(seed, "subset", s)``; the
            order is reshuffled every epoch from ``(seed, "order", epoch)``, also when the
            subset is kept (R5/R10 keep the subset, not the order).
        epoch: Epoch number, >= 0.
        **options: the run's ``batch_size`` (samples per batch; required for batch
            granularity), ``num_replicas`` (number of ranks, the torchrun world size;
            default 1) and ``rank`` (this rank, in ``[0, num_replicas)``; default 0),
            and the other fields of :class:`SRSOptions`:

            - ``interval``: round ``s = (epoch - warm_start_epochs) // interval`` (see
              :func:`selection_round`); 0 keeps one subset for the run (fixed random subset).
            - ``within_epoch_replacement``: False (paper): m distinct indices, uniform over
              size-m subsets; True: m i.i.d. uniform indices, which may repeat.
            - ``granularity``: ``"batch"`` shuffles once per run (stream ``(seed,
              "batches")``), cuts ``ceil(n / batch_size)`` batches B and draws ``k =
              floor(ratio * B + 0.5)`` whole batches per round (distinct, or i.i.d.); the
              epoch concatenates them in an order reshuffled every epoch, and warm-start
              epochs yield all batches. ``"sample"`` ignores ``batch_size``. With several
              ranks ``batch_size`` is the GLOBAL batch: the global order of whole batches
              is sharded ``rank::num_replicas``, so each global batch is split over the
              ranks, ``batch_size / num_replicas`` samples each (pass the per-rank batch
              times num_replicas; the partition's short last batch, where chosen, shifts
              the batches after it in the epoch's order off that alignment).
            - ``warm_start_epochs``: leading epochs on the full data (a fresh permutation each).

    Every rank computes the same global epoch order and takes positions ``rank::num_replicas``.
    To keep ranks in lockstep, sample mode rounds m DOWN to a multiple of ``num_replicas``; where
    the global length is not a multiple (warm start, or batch mode) its last ``< num_replicas``
    indices are dropped. Ranks are disjoint without replacement; their union is the global subset.
    With ``ratio=1``, no replacement and one rank, every epoch is a permutation of ``range(n)``.

    Returns:
        int64 tensor of indices into the dataset, same length on every rank.

    Raises:
        ValueError: any bad argument; the message names the bad value.
    """
    epoch = as_int("epoch", epoch, 0)
    return _epoch_indices(_Plan(n=n, ratio=ratio, seed=seed, **options), epoch)


class SoftRandomSampler(PlanSampler):
    """A ``torch.utils.data.Sampler`` yielding ``soft_random_indices`` for the current epoch.

    Call ``set_epoch(epoch)`` before each epoch, as with ``DistributedSampler``. The sampler
    counts the indices its iterator has yielded this epoch (``position``), so a checkpoint can
    resume mid-epoch: ``load_state_dict`` makes the next ``__iter__`` skip what was yielded.
    Arguments are those of :func:`soft_random_indices` (``seed`` defaults to 0; ``**options``
    are :class:`SRSOptions` and ``batch_size``); each is readable as an attribute
    (``sampler.ratio``, ``sampler.interval``, ...), and ``sampler.options`` is the
    :class:`SRSOptions`. ``num_replicas`` and ``rank`` default from the process group, as it
    is when the first epoch is planned (see :class:`~sievetrain.sampling.EpochSampler`), so
    the sampler may be built before the group starts: under ``torchrun`` each rank yields
    its own share of the epoch's global subset; in batch granularity ``batch_size`` is the
    global batch. The state rank 0 saves loads on every rank.

    Note: a ``DataLoader`` with workers pulls indices ahead of training; a trainer that
    checkpoints mid-epoch should overwrite ``state["position"]`` with the samples it consumed.
    """

    options_class = SRSOptions
    plan_indices = staticmethod(_epoch_indices)

    def __init__(
        self,
        n: int,
        ratio: float = SRSOptions.ratio,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(num_replicas, rank)
        self._plan = _Plan(n=n, ratio=ratio, seed=seed, **self._current_ranks(), **options)

    @property
    def subset_size(self) -> int:
        """Units drawn per round: batches (batch mode) or samples, a multiple of num_replicas."""
        return self._plan.units_per_round
