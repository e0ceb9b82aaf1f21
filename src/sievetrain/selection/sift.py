"""SIFT: backpropagate only the samples an early exit says are hardest.

For each batch of b samples a scoring pass runs the model up to an early exit
without gradients, scores every sample by its exit loss (or by its exit
prediction entropy, which needs no labels), and keeps the ``ceil(ratio * b)``
highest. Only those get the full forward and backward pass. Uniform random keep
of the same size is the control that shows whether the choice matters.

Under ``DistributedDataParallel`` (W ranks) both take the DDP wrapper and score
through the module inside it (stage names are that module's), with no DDP
collective. Each rank keeps ``ceil(ratio * b)`` of its own batch of b, so every rank
takes the same steps. A linear exit head averages its gradients over the ranks
before each step (one all-reduce per batch): zero-initialised alike, the heads stay
bitwise identical, so SIFT's whole state is the same on every rank. RandomKeep's
generator is seeded alike on every rank: each rank keeps the same positions of its
own (different) batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from sievetrain.distributed import unwrap
from sievetrain.losses import sample_entropies, sample_losses
from sievetrain.options import Options, RunContext, as_int, option
from sievetrain.rng import make_generator
from sievetrain.scoring import scoring_mode
from sievetrain.selection.base import Selector, keep_count
from sievetrain.selection.early_exit import EarlyExit, ExitHead, check_exit, exit_stage

__all__ = [
    "SCORES",
    "SIFT",
    "RandomKeep",
    "RandomKeepOptions",
    "SIFTOptions",
    "keep_count",
    "select_top_k",
]


def select_top_k(scores: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` highest ``scores``, in ascending position order (so a
    batch keeps its order); ties go to the earlier position."""
    order = torch.argsort(-scores, stable=True)  # descending, stable
    return order[:k].sort().values


Score = Literal["loss", "entropy"]
SCORES: tuple[str, ...] = get_args(Score)


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio <= 1:
        raise ValueError(f"invalid ratio={ratio!r}: must be in (0, 1]")


@dataclass(frozen=True)
class SIFTOptions(Options):
    """SIFT's options: the keywords of :class:`SIFT`, the options of ``sift`` and
    ``sift-entropy``."""

    needs_model = True  # check() runs one scoring pass to see that the exit fits

    ratio: float = option(0.5, "ρ: fraction of each batch backpropagated, in (0, 1]")
    stage: str | None = option(None, "submodule to exit after; none: the model's exit_stage")
    head: ExitHead = option("auto", "exit head: the model's own (reuse), a trained linear, or auto")
    score: Score = option("loss", "exit cross-entropy, or exit prediction entropy (label-free)")
    warmup_steps: int = option(0, "batches at the start kept whole (the exit still scores them)")
    head_lr: float = option(1e-3, "Adam learning rate of a linear exit head")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ratio(self.ratio)
        if self.warmup_steps < 0:
            raise ValueError(f"invalid warmup_steps={self.warmup_steps!r}: must be >= 0")
        if not self.head_lr > 0:
            raise ValueError(f"invalid head_lr={self.head_lr!r}: must be > 0")

    def backprop_fraction(self, context: RunContext) -> float:
        """ρ: the share of each batch backpropagated (warm-up batches aside)."""
        return self.ratio

    def check(self, context: RunContext) -> None:
        x, y = context.sample
        check_exit(
            context.model, x, y, stage=self.stage, head=self.head, num_classes=context.num_classes
        )


@dataclass(frozen=True)
class RandomKeepOptions(Options):
    """Uniform random keep's options (SIFT's control): the ``random-keep`` method."""

    ratio: float = option(SIFTOptions.ratio, "fraction of each batch backpropagated, in (0, 1]")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ratio(self.ratio)

    def backprop_fraction(self, context: RunContext) -> float:
        return self.ratio


class SIFT(Selector):
    """Keep the ``ceil(ratio * b)`` samples of each batch with the highest exit score.

    Args:
        ratio: fraction kept (rho), in (0, 1]; default 0.5 as in the paper.
        num_classes: outputs of a linear exit head.
        **options: the other fields of :class:`SIFTOptions`: ``stage`` (submodule
            after which to exit; ``None`` takes the model's ``exit_stage``
            attribute, which the reference models set to their first layer),
            ``head`` (``"auto"``, ``"reuse"`` or ``"linear"``, see
            :mod:`sievetrain.selection.early_exit`), ``score`` (``"loss"``: exit
            cross-entropy; ``"entropy"``: exit prediction entropy, label-free),
            ``warmup_steps`` (batches at the start kept whole; the exit head is
            still scored and trained on them) and ``head_lr``.

    The exit is attached to the model on the first :meth:`select`; call
    :meth:`remove` to take it off.

    Under DDP, :meth:`select` and :meth:`score` take the wrapper and run the exit on
    the module inside it. A linear head's gradients are averaged over the ranks, so
    the head, ``steps`` and ``samples_scored`` (with equal local batch sizes) are the
    same on every rank and rank 0's :meth:`state_dict` resumes every rank.
    """

    def __init__(
        self, ratio: float = SIFTOptions.ratio, *, num_classes: int | None = None, **options: Any
    ) -> None:
        self.options = SIFTOptions(ratio=ratio, **options)
        self.num_classes = (
            as_int("num_classes", num_classes, 1) if num_classes is not None else None
        )
        self.exit: EarlyExit | None = None
        self.steps = 0
        self.samples_scored = 0
        self._pending_exit_state: dict[str, Any] | None = None

    def attach(self, model: nn.Module) -> EarlyExit:
        """The exit on ``model`` (the module inside a DDP wrapper), attached on first use."""
        model = unwrap(model)
        if self.exit is None:
            o = self.options
            self.exit = EarlyExit(
                model,
                exit_stage(model, o.stage),
                head=o.head,
                num_classes=self.num_classes,
                lr=o.head_lr,
            )
            if self._pending_exit_state is not None:
                self.exit.load_state_dict(self._pending_exit_state)
                self._pending_exit_state = None
        return self.exit

    def remove(self) -> None:
        """Detach the exit from the model (a later ``select`` attaches it again)."""
        if self.exit is not None:
            self._pending_exit_state = self.exit.state_dict()
            self.exit.remove()
            self.exit = None

    def score(self, model: nn.Module, x: Tensor, y: Tensor, *, train_head: bool = False) -> Tensor:
        """Exit score of each sample, shape (B,); higher means keep. A linear exit
        head learns from the batch only when ``train_head`` (as in :meth:`select`;
        then, under DDP, every rank must call it)."""
        model = unwrap(model)  # the scoring pass runs no DDP collective
        with scoring_mode(model):
            logits = self.attach(model).logits(model, x, y, train_head=train_head)
        score_fn = sample_losses if self.options.score == "loss" else sample_entropies
        return score_fn(logits, y)

    def select(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        scores = self.score(model, x, y, train_head=True)
        self.samples_scored += len(y)
        self.steps += 1
        if self.steps <= self.options.warmup_steps:
            return None
        return select_top_k(scores, keep_count(len(y), self.options.ratio))

    def stats(self) -> dict[str, Any]:
        return {
            "samples_forwarded_partially": self.samples_scored,
            "exit_stage": self.exit.stage if self.exit is not None else self.options.stage,
            "exit_head": self.exit.kind if self.exit is not None else self.options.head,
        }

    def state_dict(self) -> dict[str, Any]:
        exit_state = self.exit.state_dict() if self.exit is not None else self._pending_exit_state
        return {"steps": self.steps, "samples_scored": self.samples_scored, "exit": exit_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.samples_scored = state["steps"], state["samples_scored"]
        self._pending_exit_state = state["exit"]
        if self.exit is not None and state["exit"] is not None:
            self.exit.load_state_dict(state["exit"])
            self._pending_exit_state = None


class RandomKeep(Selector):
    """Keep a uniform random ``ceil(ratio * b)`` of each batch: SIFT's control.

    Args:
        ratio: fraction kept, in (0, 1] (:class:`RandomKeepOptions`).
        seed: seeds the owned generator (the global RNG is never read).

    The model is not read, so a DDP wrapper is as good as any. Under DDP give every
    rank the same ``seed``: the generators then stay identical, each rank keeps the
    same count (and positions) of its own batch, and rank 0's :meth:`state_dict`
    resumes every rank.
    """

    def __init__(self, ratio: float = RandomKeepOptions.ratio, *, seed: int = 0) -> None:
        self.options = RandomKeepOptions(ratio=ratio)
        self.generator = make_generator(as_int("seed", seed), "random-keep")

    def select(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        k = keep_count(len(y), self.options.ratio)
        keep = torch.randperm(len(y), generator=self.generator)[:k].sort().values
        return keep.to(y.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
