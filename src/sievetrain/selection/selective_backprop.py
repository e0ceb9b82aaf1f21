"""Selective Backprop (Jiang et al. 2019): backprop a sample with a probability that
grows with how its loss ranks among recent losses.

Every sample gets a forward pass without gradients; a sample whose loss sits at
percentile p of the last ``history`` losses is kept with probability
``max(min_prob, p ** beta)``. The first ``full_epochs`` epochs keep everything.
Kept samples are accumulated by the trainer into full backward batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sievetrain.losses import sample_losses
from sievetrain.options import Options, RunContext, as_int, option
from sievetrain.rng import make_generator
from sievetrain.scoring import scoring_mode
from sievetrain.selection.base import Selector

__all__ = ["SelectiveBackprop", "SelectiveBackpropOptions", "keep_probabilities"]


def keep_probabilities(losses: Tensor, history: Tensor, *, beta: float, min_prob: float) -> Tensor:
    """``max(min_prob, p ** beta)`` per loss, where ``p`` is the fraction of
    ``history`` (1-D, which should already hold ``losses``) at or below it."""
    percentile = (history[None, :] <= losses[:, None]).double().mean(dim=1)  # (B,)
    return percentile.pow(beta).clamp_min(min_prob)


@dataclass(frozen=True)
class SelectiveBackpropOptions(Options):
    """Selective Backprop's options: the keywords of :class:`SelectiveBackprop`, the
    options of the ``selective-backprop`` method."""

    beta: float = option(3.0, "β: selectivity; 3 in the authors' example (keeps ~1/4 of a batch)")
    min_prob: float = option(0.05, "s_min: floor on the keep probability, in [0, 1]")
    history: int = option(1024, "recent losses the percentile is taken over, >= 1")
    full_epochs: int = option(1, "epochs at the start that keep every sample (no scoring pass)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"invalid beta={self.beta!r}: must be > 0")
        if not 0 <= self.min_prob <= 1:
            raise ValueError(f"invalid min_prob={self.min_prob!r}: must be in [0, 1]")
        if self.history < 1:
            raise ValueError(f"invalid history={self.history!r}: must be >= 1")
        if self.full_epochs < 0:
            raise ValueError(f"invalid full_epochs={self.full_epochs!r}: must be >= 0")

    def backprop_fraction(self, context: RunContext) -> float:
        """All of the first ``full_epochs``, then E[max(s, U^β)] for a percentile U
        uniform on [0, 1]: ``s^(1 + 1/β) + (1 - s^(1 + 1/β)) / (1 + β)``."""
        s, beta = self.min_prob, self.beta
        floor = s ** (1 + 1 / beta)
        kept = floor + (1 - floor) / (1 + beta)
        full = min(self.full_epochs, context.epochs)
        return (full + (context.epochs - full) * kept) / context.epochs


class SelectiveBackprop(Selector):
    """Keep each sample with probability ``max(min_prob, percentile(loss) ** beta)``.

    Args:
        beta: selectivity β (:class:`SelectiveBackpropOptions`).
        seed: seeds the owned generator of the keep draws.
        **options: the other fields of :class:`SelectiveBackpropOptions`:
            ``min_prob``, ``history``, ``full_epochs``.
    """

    accumulates = True  # the trainer gathers kept samples into full batches

    def __init__(
        self, beta: float = SelectiveBackpropOptions.beta, *, seed: int = 0, **options: Any
    ) -> None:
        self.options = SelectiveBackpropOptions(beta=beta, **options)
        self.recent_losses = torch.empty(0)  # the last `history` losses, oldest first
        self.samples_scored = 0
        self.generator = make_generator(as_int("seed", seed), "selective-backprop")

    def score(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """True per-sample loss (a full forward pass without gradients), shape (B,)."""
        with scoring_mode(model), torch.no_grad():
            return sample_losses(model(x), y)

    def select(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        o = self.options
        if self.epoch < o.full_epochs:
            return None
        losses = self.score(model, x, y).float().cpu()
        self.samples_scored += len(y)
        self.recent_losses = torch.cat([self.recent_losses, losses])[-o.history :]
        probs = keep_probabilities(losses, self.recent_losses, beta=o.beta, min_prob=o.min_prob)
        draws = torch.rand(len(y), generator=self.generator, dtype=torch.float64)
        return (draws < probs).nonzero().squeeze(1).to(y.device)

    def stats(self) -> dict[str, Any]:
        return {"samples_forwarded_no_grad": self.samples_scored}

    def state_dict(self) -> dict[str, Any]:
        return {
            "recent_losses": self.recent_losses.clone(),
            "epoch": self.epoch,
            "samples_scored": self.samples_scored,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent_losses = state["recent_losses"].clone()
        self.set_epoch(state["epoch"])
        self.samples_scored = state["samples_scored"]
        self.generator.set_state(state["generator"])
