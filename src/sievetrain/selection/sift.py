"""SIFT: backpropagate only the samples an early exit says are hardest.

For each batch of b samples a scoring pass runs the model up to an early exit
without gradients, scores every sample by its exit loss (or by its exit
prediction entropy, which needs no labels), and keeps the ``ceil(ratio * b)``
highest. Only those get the full forward and backward pass. Uniform random keep
of the same size is the control that shows whether the choice matters.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from sievetrain._rng import make_generator
from sievetrain.losses import sample_entropies, sample_losses
from sievetrain.selection.early_exit import EXIT_HEADS, EarlyExit, scoring_mode

__all__ = ["SCORES", "SIFT", "RandomKeep", "keep_count", "select_top_k"]

SCORES = ("loss", "entropy")


def keep_count(batch: int, ratio: float) -> int:
    """Samples kept of a batch: ``ceil(ratio * batch)``, at least 1 for a non-empty batch.

    ``ratio * batch`` is rounded to 9 decimals first, so that a product that is an
    integer on paper (0.3 * 10 = 3.0000000000000004 in floating point) is not
    rounded up past it.
    """
    return min(batch, max(math.ceil(round(ratio * batch, 9)), 1 if batch else 0))


def select_top_k(scores: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` highest ``scores``, in ascending position order (so a
    batch keeps its order); ties go to the earlier position."""
    order = torch.argsort(-scores, stable=True)  # descending, stable
    return order[:k].sort().values


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio <= 1:
        raise ValueError(f"invalid ratio={ratio!r}: must be in (0, 1]")


class SIFT:
    """Keep the ``ceil(ratio * b)`` samples of each batch with the highest exit score.

    Args:
        ratio: fraction kept (rho), in (0, 1]; default 0.5 as in the paper.
        stage: submodule after which to exit; ``None`` takes the model's
            ``exit_stage`` attribute (the reference models name their first layer).
        head: exit head, ``"auto"``, ``"reuse"`` or ``"linear"`` (see
            :mod:`sievetrain.selection.early_exit`).
        score: ``"loss"`` (exit cross-entropy) or ``"entropy"`` (exit prediction
            entropy, label-free).
        warmup_steps: batches at the start that are kept whole (the exit head is
            still scored and trained on them).
        num_classes: outputs of a linear exit head.
        head_lr: learning rate of a linear exit head.

    The exit is attached to the model on the first :meth:`select`; call
    :meth:`remove` to take it off.
    """

    def __init__(
        self,
        ratio: float = 0.5,
        *,
        stage: str | None = None,
        head: str = "auto",
        score: str = "loss",
        warmup_steps: int = 0,
        num_classes: int | None = None,
        head_lr: float = 1e-3,
    ) -> None:
        _check_ratio(ratio)
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; known: {', '.join(SCORES)}")
        if head not in EXIT_HEADS:
            raise ValueError(f"unknown exit head {head!r}; known: {', '.join(EXIT_HEADS)}")
        if warmup_steps < 0:
            raise ValueError(f"invalid warmup_steps={warmup_steps!r}: must be >= 0")
        if head_lr <= 0:
            raise ValueError(f"invalid head_lr={head_lr!r}: must be > 0")
        self.ratio, self.stage, self.head, self.score_kind = ratio, stage, head, score
        self.warmup_steps, self.num_classes, self.head_lr = warmup_steps, num_classes, head_lr
        self.exit: EarlyExit | None = None
        self.steps = 0
        self.samples_scored = 0
        self._pending_exit_state: dict[str, Any] | None = None

    def attach(self, model: nn.Module) -> EarlyExit:
        """The exit on ``model``, attached on first use."""
        if self.exit is None:
            stage = self.stage or getattr(model, "exit_stage", None)
            if stage is None:
                raise ValueError("SIFT needs stage= (the model declares no exit_stage)")
            self.exit = EarlyExit(
                model, stage, head=self.head, num_classes=self.num_classes, lr=self.head_lr
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
        head learns from the batch only when ``train_head`` (as in :meth:`select`)."""
        with scoring_mode(model):
            logits = self.attach(model).logits(model, x, y, train_head=train_head)
        score_fn = sample_losses if self.score_kind == "loss" else sample_entropies
        return score_fn(logits, y)

    def select(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        scores = self.score(model, x, y, train_head=True)
        self.samples_scored += len(y)
        self.steps += 1
        if self.steps <= self.warmup_steps:
            return None
        return select_top_k(scores, keep_count(len(y), self.ratio))

    def stats(self) -> dict[str, Any]:
        return {
            "samples_forwarded_partially": self.samples_scored,
            "exit_stage": self.exit.stage if self.exit is not None else self.stage,
            "exit_head": self.exit.kind if self.exit is not None else self.head,
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


class RandomKeep:
    """Keep a uniform random ``ceil(ratio * b)`` of each batch: SIFT's control.

    Args:
        ratio: fraction kept, in (0, 1].
        seed: seeds the owned generator (the global RNG is never read).
    """

    def __init__(self, ratio: float = 0.5, *, seed: int = 0) -> None:
        _check_ratio(ratio)
        self.ratio = ratio
        self.generator = make_generator(seed, "random-keep")

    def select(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        k = keep_count(len(y), self.ratio)
        keep = torch.randperm(len(y), generator=self.generator)[:k].sort().values
        return keep.to(y.device)

    def stats(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
