"""Selective Backprop (Jiang et al. 2019): backprop a sample with a probability that
grows with how its loss ranks among recent losses.

Every sample gets a forward pass without gradients; a sample whose loss sits at
percentile p of the last ``history`` losses is kept with probability
``max(min_prob, p ** beta)``. The first ``full_epochs`` epochs keep everything.
Kept samples are accumulated by the trainer into full backward batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sievetrain._rng import make_generator
from sievetrain.losses import sample_losses
from sievetrain.selection.early_exit import scoring_mode

__all__ = ["SelectiveBackprop", "keep_probabilities"]


def keep_probabilities(losses: Tensor, history: Tensor, *, beta: float, min_prob: float) -> Tensor:
    """``max(min_prob, p ** beta)`` per loss, where ``p`` is the fraction of
    ``history`` (1-D, which should already hold ``losses``) at or below it."""
    percentile = (history[None, :] <= losses[:, None]).double().mean(dim=1)  # (B,)
    return percentile.pow(beta).clamp_min(min_prob)


class SelectiveBackprop:
    """Keep each sample with probability ``max(min_prob, percentile(loss) ** beta)``.

    Args:
        beta: selectivity; 3 in the authors' example (expected keep ~1/4 of a batch).
        min_prob: floor on the keep probability (s_min), in [0, 1].
        history: number of recent losses the percentile is taken over.
        full_epochs: epochs at the start that keep every sample (no scoring pass).
        seed: seeds the owned generator of the keep draws.
    """

    accumulates = True  # the trainer gathers kept samples into full batches

    def __init__(
        self,
        beta: float = 3.0,
        *,
        min_prob: float = 0.05,
        history: int = 1024,
        full_epochs: int = 1,
        seed: int = 0,
    ) -> None:
        if not beta > 0:
            raise ValueError(f"invalid beta={beta!r}: must be > 0")
        if not 0 <= min_prob <= 1:
            raise ValueError(f"invalid min_prob={min_prob!r}: must be in [0, 1]")
        if history < 1:
            raise ValueError(f"invalid history={history!r}: must be >= 1")
        if full_epochs < 0:
            raise ValueError(f"invalid full_epochs={full_epochs!r}: must be >= 0")
        self.beta, self.min_prob, self.full_epochs = beta, min_prob, full_epochs
        self.history = history
        self.recent_losses = torch.empty(0)  # the last `history` losses, oldest first
        self.epoch = 0
        self.samples_scored = 0
        self.generator = make_generator(seed, "selective-backprop")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def score(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """True per-sample loss (a full forward pass without gradients), shape (B,)."""
        with scoring_mode(model), torch.no_grad():
            return sample_losses(model(x), y)

    def select(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        if self.epoch < self.full_epochs:
            return None
        losses = self.score(model, x, y).float().cpu()
        self.samples_scored += len(y)
        self.recent_losses = torch.cat([self.recent_losses, losses])[-self.history :]
        probs = keep_probabilities(
            losses, self.recent_losses, beta=self.beta, min_prob=self.min_prob
        )
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
        self.epoch, self.samples_scored = state["epoch"], state["samples_scored"]
        self.generator.set_state(state["generator"])
