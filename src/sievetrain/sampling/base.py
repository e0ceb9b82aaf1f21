"""The epoch-level sampler protocol, and what every sampler here shares: an epoch,
and a position inside it that a checkpoint can save and a resumed run skips to.

The trainer calls, every epoch and for every sampler, ``set_epoch(epoch)``, then
``refresh(model, dataset)`` (a coreset chooses its subset from the model here; a
sampler that needs no model does nothing), then iterates, weighting the loss by
``sample_weights(idx)`` (None: all equal). ``stats()`` goes into the run's results;
``state_dict()`` / ``load_state_dict()`` hold everything needed to resume.

Every sampler is a ``DistributedSampler``. Under ``torchrun`` the ones that shard
(``num_replicas`` > 1) yield each rank its own share of the epoch's global indices, all
ranks the same count (lockstep), and the state rank 0 saves loads on every rank. Every
rank calls ``len``, ``iter`` and ``state_dict`` together: some samplers (InfoBatch) run a
collective there.

A sampler left to follow the process group (``num_replicas=None``) takes its ranks when
its first epoch is planned, not when it is built: a ``DataLoader`` made before the
framework starts the group shards by it all the same.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

from sievetrain.distributed import replicas, world
from sievetrain.losses import batch_loss, sample_losses
from sievetrain.options import as_int
from sievetrain.sampling.reshard import check_not_sharded_again

__all__ = ["EpochSampler", "PlanSampler", "as_int", "check_ranks", "check_same_config", "shard"]


def check_same_config(mine: dict, saved: dict) -> None:
    """Raise ValueError naming the first key where a saved config differs from ours.

    ``rank`` is not compared: frameworks save one rank's state and every rank loads it
    (ranks run in lockstep, so rank 0's position is every rank's). ``num_replicas`` is;
    a saved config without it comes from before ranks existed: one process.
    """
    if "num_replicas" in mine:
        saved = {"num_replicas": 1, **saved}
    for key in sorted((mine.keys() | saved.keys()) - {"rank"}):
        if (ours := mine.get(key)) != (theirs := saved.get(key)):
            raise ValueError(f"state has {key}={theirs!r}, this sampler has {ours!r}")


def check_ranks(num_replicas: object, rank: object, least: int, what: str = "") -> None:
    """ValueError naming the bad value unless ``num_replicas >= 1``, ``0 <= rank <
    num_replicas``, and the fewest samples an epoch can have (``least``) give every rank
    one; ``what`` starts that last message (``"ratio 0.1: "``)."""
    as_int("num_replicas", num_replicas, 1)
    as_int("rank", rank, 0, num_replicas)
    if least < num_replicas:
        raise ValueError(f"{what}{least} samples < {num_replicas} ranks")


def shard(order: torch.Tensor, num_replicas: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s share of an epoch's global ``order``: positions ``rank::num_replicas``,
    after the last ``order.numel() % num_replicas`` are dropped, so that every rank has as
    many (lockstep). Ranks' shares are disjoint positions; with one rank, all of ``order``."""
    usable = order.numel() // num_replicas * num_replicas
    return order[rank:usable:num_replicas]


class EpochSampler(DistributedSampler[int]):
    """A ``Sampler`` whose indices are a function of the epoch (``_compute_indices``).

    Call ``set_epoch(epoch)`` before each epoch, as with ``DistributedSampler``. The
    sampler counts the indices its iterator has yielded this epoch (``position``), so
    a checkpoint can resume mid-epoch: ``load_position`` makes the next ``__iter__``
    skip what was yielded. Subclasses call ``forget_indices()`` when what
    ``_compute_indices`` returns changes for the current epoch.

    It is a ``DistributedSampler``, so that frameworks which look for one (Lightning,
    hand-written loops) neither wrap it in another nor shard it twice, and it has the
    attributes they read: ``num_replicas`` and ``rank`` (this rank's share; 1 and 0 for a
    sampler that does not shard), ``epoch``, ``seed``, ``shuffle``, ``drop_last`` (ranks
    drop a global tail shorter than ``num_replicas``), ``num_samples`` (``len``, this
    rank's) and ``total_size``. It has no ``dataset``.

    Ranks: ``num_replicas=None`` follows the process group (see
    :func:`sievetrain.distributed.replicas`; ``rank=None`` likewise). Those ranks are
    resolved, once and for good, when the first epoch is planned: the first ``set_epoch``,
    ``len``, ``iter``, ``epoch_indices``, ``state_dict`` or ``load_state_dict``. Until
    then ``num_replicas`` and ``rank`` read the current process group's, without fixing
    them, so a sampler built before the group starts (a module-level ``DataLoader``, a
    framework that starts it in ``fit``) shards by it; a copy or pickle of such a sampler
    is still unresolved. A process group whose size differs from the resolved one is
    refused at each ``set_epoch`` and ``iter`` (``ValueError``). A given ``num_replicas``
    is resolved at once (with a :class:`~sievetrain.distributed.SingleReplicaWarning`
    for 1 in a group of several ranks).

    Subclasses pass their ``num_replicas`` and ``rank`` to ``__init__``, then keep their
    options and ``seed`` in ``self._plan``: a frozen dataclass with fields
    ``num_replicas`` and ``rank``, built with :meth:`_current_ranks` and replaced (its
    checks run again) when the ranks are resolved; code that reads its ranks gets it from
    :meth:`_resolved_plan`.
    """

    observes_losses: ClassVar[bool] = False  # True: loss() feeds observe_losses (InfoBatch)
    shuffle = True  # every epoch's order is a fresh random one
    drop_last = True  # lockstep: every rank yields the same count, a short global tail is dropped
    _plan: Any = None  # a subclass's options and run, with num_replicas and rank

    def __init__(self, num_replicas: int | None = 1, rank: int | None = 0) -> None:
        Sampler.__init__(self)  # not DistributedSampler's: it wants a dataset and a process group
        self._follows_group = num_replicas is None  # the world size is the process group's
        self._asked_rank = None if rank is None else as_int("rank", rank, 0)
        # (num_replicas, rank) for good; None until the first epoch is planned (following
        # the process group), so that a sampler built before the group starts shards by it.
        self._ranks: tuple[int, int] | None = None
        if num_replicas is not None:
            self._ranks = replicas(num_replicas, rank, stacklevel=3)  # warns for 1 of W > 1
        self.epoch, self._start, self._resume = 0, 0, False  # _start: resume point if _resume
        self._iterator: Iterator[int] | None = None  # this epoch's, to count what it yielded
        self._cache: tuple[int, torch.Tensor] | None = None

    @property
    def num_replicas(self) -> int:
        """Ranks the epoch is shared by: the resolved value, else the process group's now."""
        return self._current_ranks()["num_replicas"]

    @property
    def rank(self) -> int:
        """This rank's share: the resolved value, else the process group's now."""
        return self._current_ranks()["rank"]

    def _current_ranks(self) -> dict[str, int]:
        """``num_replicas`` and ``rank`` as keywords: the resolved ones, else what they would
        resolve to now (fixing nothing)."""
        if self._ranks is None:
            size, me = world()
            return {
                "num_replicas": size,
                "rank": me if self._asked_rank is None else self._asked_rank,
            }
        return {"num_replicas": self._ranks[0], "rank": self._ranks[1]}

    def _resolved_plan(self) -> Any:
        """``self._plan``, its ranks resolved (at the first call: they are fixed from then on,
        and the plan's checks that need them run here)."""
        if self._ranks is None:
            ranks = replicas(None, self._asked_rank)
            if self._plan is not None and (self._plan.num_replicas, self._plan.rank) != ranks:
                self._plan = dataclasses.replace(self._plan, num_replicas=ranks[0], rank=ranks[1])
            self._ranks = ranks
        return self._plan

    def _check_world(self) -> None:
        """Resolve the ranks; refuse a process group whose size is no longer theirs."""
        self._resolved_plan()
        planned, size = self._ranks[0], world()[0]
        if self._follows_group and size != planned:
            raise ValueError(
                f"{type(self).__name__} planned its epochs for {planned} "
                f"{'process' if planned == 1 else 'processes'}, but the process group now has "
                f"{size} {'rank' if size == 1 else 'ranks'}: build the sampler after the process "
                f"group starts, or start the group before the sampler's first set_epoch, len, "
                f"iter or state_dict"
            )

    @property
    def config(self) -> dict:
        """What a saved state must match to load (but for ``rank``): the plan's fields, its
        ranks resolved."""
        return dataclasses.asdict(self._resolved_plan())

    def _compute_indices(self, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    @property
    def seed(self) -> int:
        """The run's seed (every rank's)."""
        return self._plan.seed

    @property
    def num_samples(self) -> int:
        """Indices this rank yields in the current epoch: ``len(self)``."""
        return len(self)

    @property
    def total_size(self) -> int:
        """Indices all ranks yield together in the current epoch."""
        return len(self) * self.num_replicas

    def refresh(self, model: nn.Module, dataset: Dataset) -> None:
        """Called at the start of every epoch, after ``set_epoch``; nothing by default."""

    def sample_weights(self, idx: Tensor) -> Tensor | None:
        """Loss weight of each dataset index in ``idx``; None (the default): all equal."""
        return None

    def loss(self, logits: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        """The training loss of a batch drawn from this sampler: the cross-entropy of
        ``logits`` for targets ``y``, weighted by ``sample_weights(idx)``.

        Weights give a weighted mean (a coreset's). A sampler that ``observes_losses``
        (InfoBatch) is fed each sample's loss (``observe_losses``), and its weights scale
        the per-sample mean: ``mean(w * l)``, divided by the batch size, not by the
        weights' sum. ``idx`` may be on any device.
        """
        weight = self.sample_weights(idx.cpu())  # (B,) on the CPU, or None: all equal
        if weight is not None:
            weight = weight.to(logits.device, non_blocking=True)
        if not self.observes_losses:
            return batch_loss(logits, y, weight)
        losses = sample_losses(logits, y)  # (B,)
        self.observe_losses(idx, losses.detach())
        return (losses if weight is None else losses * weight.to(losses.dtype)).mean()

    def stats(self) -> dict:
        """Figures for the run's results (e.g. selection time); none by default."""
        return {}

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Select ``epoch`` and reset the in-epoch position to 0.

        Setting the epoch just loaded by ``load_state_dict`` keeps its pending resume, so the
        usual ``set_epoch(epoch)`` at the top of a resumed training loop is safe.
        """
        epoch = as_int("epoch", epoch, 0)
        self._check_world()
        if not (self._resume and epoch == self.epoch):
            self.epoch, self._start, self._resume, self._iterator = epoch, 0, False, None

    @property
    def position(self) -> int:
        """Indices yielded so far this epoch (after ``load_state_dict``: the resume point)."""
        if self._iterator is None:
            return self._start
        return len(self) - operator.length_hint(self._iterator)  # exact for list iterators

    @property
    def next_start(self) -> int:
        """Where the next ``__iter__`` starts: the loaded resume point, else 0."""
        return self._start if self._resume else 0

    def epoch_indices(self) -> torch.Tensor:
        """All of this rank's indices for the current epoch, in order (ignores the position)."""
        return self._indices().clone()

    def forget_indices(self) -> None:
        self._cache = None

    def _indices(self) -> torch.Tensor:
        self._resolved_plan()  # the first epoch planned fixes the ranks
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._compute_indices(self.epoch))
        return self._cache[1]

    def __len__(self) -> int:
        """Indices this rank yields in the current epoch (the full count, even mid-epoch)."""
        check_not_sharded_again(self)
        return self._indices().numel()

    def __iter__(self) -> Iterator[int]:
        self._check_world()
        check_not_sharded_again(self)
        start, self._resume = (self._start if self._resume else 0), False
        # A plain list iterator of Python ints: C-speed iteration, and it knows what is left.
        self._iterator = iter(self._indices().tolist()[start:])
        return self._iterator

    def load_position(self, epoch: object, position: object) -> None:
        """Make the next ``__iter__`` (once) resume ``epoch`` at ``position``."""
        self.epoch, self._cache = as_int("epoch", epoch, 0), None
        position = as_int("position", position, 0)
        if position > len(self):
            raise ValueError(f"position {position} is past the epoch's end ({len(self)} indices)")
        self._start, self._resume, self._iterator = position, True, None


class PlanSampler(EpochSampler):
    """An :class:`EpochSampler` whose indices are a pure function of a frozen plan
    (its options and the run they sample for) and the epoch.

    Subclasses set ``options_class`` (the method's :class:`~sievetrain.options.Options`)
    and ``plan_indices(plan, epoch)``, and build ``self._plan`` after ``__init__`` (see
    :class:`EpochSampler`); the plan has fields ``seed``, ``num_replicas`` and ``rank``.
    The plan's fields read as attributes (``sampler.ratio``), and the plan is the
    ``config`` a state must match to load (but for ``rank``).
    """

    options_class: ClassVar[type]
    plan_indices: ClassVar[Callable[[Any, int], torch.Tensor]]

    def __getattr__(self, name: str) -> object:  # the arguments, read-only: sampler.ratio, ...
        if self.__dict__.get("_plan") is not None and name in self._plan.names():
            return getattr(self._plan, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def options(self) -> Any:
        """The method's options, as this sampler runs them."""
        return self.options_class.of(self._plan)

    def _compute_indices(self, epoch: int) -> torch.Tensor:
        return type(self).plan_indices(self._resolved_plan(), epoch)

    def state_dict(self) -> dict:
        """Config, epoch and position (indices already yielded this epoch)."""
        return {"config": self.config, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Restore epoch and position; the next ``__iter__`` (once) resumes at ``position``.

        Raises:
            ValueError: the saved config differs from this sampler's, or the position is invalid.
        """
        check_same_config(self.config, state["config"])
        self.load_position(state["epoch"], state["position"])
