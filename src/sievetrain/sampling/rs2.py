"""RS2 (Okanovic et al., ICLR 2024, "Repeated Random Sampling for Minimizing the
Time-to-Accuracy of Learning"): random subsets drawn WITHOUT replacement across epochs.

Where Soft Random Sampling draws every epoch's subset independently, RS2 walks through a
stream of permutations: epoch e trains on the next m = subset_size(n, r) samples and moves to a
fresh permutation when one is used up, so that every sample is seen once every ceil(1/r) epochs
(exactly, when m divides n). Here pass p of the stream IS full data's epoch-p order
(``soft_random_indices(n, 1.0, seed=seed, epoch=p)``), so RS2 at ratio r over E epochs trains on
exactly the first E·m samples of full data's epochs, in the same order, cut into chunks of m (the
first r·E full-data epochs when m = r·n): it is full data on a compressed budget. That makes it
the sampler of the budget-matched baseline ``full/budget=F`` (:class:`FullOptions`), as well as
of the ``rs2`` method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sievetrain.options import Options, RunContext, option
from sievetrain.sampling.base import PlanSampler, as_int, check_ranks, shard
from sievetrain.sampling.srs import soft_random_indices, subset_size

__all__ = ["FullOptions", "RS2Options", "RS2Sampler", "rs2_indices"]


@dataclass(frozen=True)
class RS2Options(Options):
    """RS2's options: the keywords of :class:`RS2Sampler` and :func:`rs2_indices`, and the
    options of the ``rs2`` method."""

    ratio: float = option(
        0.3,
        "r: fraction of the data an epoch trains on, in (0, 1]; "
        "every sample once per ceil(1/r) epochs",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.ratio <= 1:  # NaN lands here too
            raise ValueError(f"ratio must be a number in (0, 1], got {self.ratio!r}")

    def check(self, context: RunContext) -> None:
        _check_run(self.ratio, context)

    def backprop_fraction(self, context: RunContext) -> float:
        """r: every epoch backpropagates m = r·n samples."""
        return self.ratio


@dataclass(frozen=True)
class FullOptions(Options):
    """The options of the ``full`` method: full data trained for the fraction F of the run's
    optimizer steps — an RS2 sampler at ratio F, so that F·n samples make each of the run's E
    evaluation epochs and the epoch-indexed schedule ends, fully decayed, at the budget. It
    trains on exactly the first F·E epochs of plain full data, in the same order (when F·n and
    F·E are integers; a prefix of the next epoch's order otherwise).
    ``full/budget=1`` is plain full data."""

    budget: float = option(
        1.0,
        "F: fraction of the bench's optimizer steps (F·E epochs' worth of full data), in (0, 1]; "
        "the schedule is compressed to end, fully decayed, at that budget",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.budget <= 1:  # NaN lands here too
            raise ValueError(f"budget must be a number in (0, 1], got {self.budget!r}")

    def check(self, context: RunContext) -> None:
        _check_run(self.budget, context)

    def backprop_fraction(self, context: RunContext) -> float:
        """F: the run backpropagates F times full data's samples."""
        return self.budget


def _check_run(ratio: float, context: RunContext) -> None:
    """What RS2 at ``ratio`` needs from the run: a non-empty epoch and a real batch size."""
    _RS2Plan(ratio=ratio, n=context.n, seed=context.seed)
    as_int("batch_size", context.batch_size, 1)


@dataclass(frozen=True, kw_only=True)
class _RS2Plan(RS2Options):
    """Options and the run they sample for (the sampler's ``state_dict()["config"]``)."""

    n: int
    seed: int
    num_replicas: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        size = subset_size(self.n, self.ratio)  # checks n, and that the epoch is not empty
        check_ranks(self.num_replicas, self.rank, size, f"ratio {self.ratio!r}: ")

    @property
    def per_epoch(self) -> int:
        """Global samples per epoch: m rounded DOWN to a multiple of num_replicas (lockstep)."""
        return subset_size(self.n, self.ratio) // self.num_replicas * self.num_replicas


def _stream(n: int, seed: int, start: int, stop: int) -> torch.Tensor:
    """Positions ``[start, stop)`` of the stream (full data's epoch orders, concatenated),
    computing only the passes they touch: cost O(n + stop - start)."""
    first, last = start // n, (stop - 1) // n
    passes = [soft_random_indices(n, 1.0, seed=seed, epoch=p) for p in range(first, last + 1)]
    return torch.cat(passes)[start - first * n : stop - first * n]


def _epoch_indices(plan: _RS2Plan, epoch: int) -> torch.Tensor:
    """This rank's indices for ``epoch``: its share of stream positions ``[e m, (e+1) m)``."""
    m = plan.per_epoch
    chunk = _stream(plan.n, plan.seed, epoch * m, (epoch + 1) * m)  # (m,) global order
    return shard(chunk, plan.num_replicas, plan.rank)  # m is a multiple: nothing dropped


def rs2_indices(
    n: int,
    ratio: float,
    *,
    seed: int,
    epoch: int,
    num_replicas: int = 1,
    rank: int = 0,
) -> torch.Tensor:
    """Training indices of one rank for one epoch of RS2 without replacement, in training order.

    The stream is full data's epoch orders one after another: pass p is
    ``soft_random_indices(n, 1.0, seed=seed, epoch=p)``. Epoch e trains on stream positions
    ``[e m, (e+1) m)``: a pure function of (seed, epoch, rank), O(n) per epoch. No sample repeats
    until the pass runs out, so every sample is seen once every ``n / m`` epochs when m divides n;
    otherwise an epoch that straddles two passes ends one and starts the next (and may meet a
    sample twice). At ``ratio=1`` every epoch is full data's epoch, bitwise.

    Args:
        n: Dataset size.
        ratio: Subset ratio r in (0, 1]; ``m = subset_size(n, ratio)`` samples per epoch.
        seed: Run seed (the passes use SRS's streams ``(seed, "subset", p)`` and
            ``(seed, "order", p)``).
        epoch: Epoch number, >= 0.
        num_replicas: Number of ranks (the torchrun world size). m is rounded DOWN to a
            multiple of it, so ranks stay in lockstep.
        rank: This rank, in ``[0, num_replicas)``; it takes positions ``rank::num_replicas``
            of the epoch's global chunk, so ranks are disjoint and their union is the chunk.

    Returns:
        int64 tensor of indices into the dataset, same length on every rank.

    Raises:
        ValueError: any bad argument; the message names the bad value.
    """
    epoch = as_int("epoch", epoch, 0)
    plan = _RS2Plan(n=n, ratio=ratio, seed=seed, num_replicas=num_replicas, rank=rank)
    return _epoch_indices(plan, epoch)


class RS2Sampler(PlanSampler):
    """A ``torch.utils.data.Sampler`` yielding :func:`rs2_indices` for the current epoch.

    Call ``set_epoch(epoch)`` before each epoch, as with ``DistributedSampler``; the sampler
    counts the indices its iterator has yielded this epoch (``position``), so a checkpoint can
    resume mid-epoch. Arguments are those of :func:`rs2_indices` (``seed`` defaults to 0); each
    is readable as an attribute (``sampler.ratio``, ``sampler.n``, ...), and ``sampler.options``
    is the :class:`RS2Options`. ``num_replicas`` and ``rank`` default from the process group,
    as it is when the first epoch is planned (see :class:`~sievetrain.sampling.EpochSampler`),
    so the sampler may be built before the group starts: under ``torchrun`` each rank yields
    its own share of the epoch's global chunk. The state rank 0 saves loads on every rank.
    """

    options_class = RS2Options
    plan_indices = staticmethod(_epoch_indices)

    def __init__(
        self,
        n: int,
        ratio: float = RS2Options.ratio,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(num_replicas, rank)
        self._plan = _RS2Plan(n=n, ratio=ratio, seed=seed, **self._current_ranks())

    @property
    def subset_size(self) -> int:
        """Global samples per epoch, a multiple of num_replicas."""
        return self._plan.per_epoch
