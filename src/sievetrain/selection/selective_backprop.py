"""Selective Backprop (Jiang et al. 2019): backprop a sample with a probability that
grows with how its loss ranks among recent losses.

Every sample gets a forward pass without gradients; a sample whose loss sits at
percentile p of the last ``history`` losses is kept with probability
``max(min_prob, p ** beta)``. The first ``full_epochs`` epochs keep everything.
Kept samples are accumulated by the trainer into full backward batches.

Under ``DistributedDataParallel`` (W > 1 ranks) independent draws would keep a
different count on each rank, and with accumulation the ranks would then take
different numbers of optimizer steps: the run would deadlock. So, as Composer does,
each batch of b keeps a fixed ``keep_count(b, f)`` samples, f the expected keep
fraction E[max(min_prob, U ** beta)] (:func:`expected_keep_fraction`), drawn without
replacement with probability proportional to the keep probabilities. The losses of
every rank's batch are gathered (one all-gather per batch, batch sizes checked equal
first) into one history, so the percentiles, the seeded generator and hence the
selector's whole state are the same on every rank. The scoring pass runs on the
module inside the DDP wrapper, with no DDP collective. One process keeps the
independent per-sample draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sievetrain.distributed import all_gather, unwrap, world
from sievetrain.losses import sample_losses
from sievetrain.options import Options, RunContext, as_int, option
from sievetrain.rng import make_generator
from sievetrain.scoring import scoring_mode
from sievetrain.selection.base import Selector, keep_count

__all__ = [
    "SelectiveBackprop",
    "SelectiveBackpropOptions",
    "expected_keep_fraction",
    "keep_probabilities",
    "sample_proportional",
]


def keep_probabilities(losses: Tensor, history: Tensor, *, beta: float, min_prob: float) -> Tensor:
    """``max(min_prob, p ** beta)`` per loss, where ``p`` is the fraction of
    ``history`` (1-D, which should already hold ``losses``) at or below it."""
    percentile = (history[None, :] <= losses[:, None]).double().mean(dim=1)  # (B,)
    return percentile.pow(beta).clamp_min(min_prob)


def expected_keep_fraction(*, beta: float, min_prob: float) -> float:
    """E[max(s, U^β)] for a percentile U uniform on [0, 1], s = ``min_prob``: the
    expected share of a batch kept, ``s^(1 + 1/β) + (1 - s^(1 + 1/β)) / (1 + β)``."""
    floor = min_prob ** (1 + 1 / beta)
    return floor + (1 - floor) / (1 + beta)


def sample_proportional(probs: Tensor, k: int, *, generator: torch.Generator) -> Tensor:
    """``k`` distinct positions of ``probs`` (B,), drawn without replacement with
    probability proportional to ``probs``, in ascending order."""
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=probs.device)
    return torch.multinomial(probs, k, replacement=False, generator=generator).sort().values


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
        kept = expected_keep_fraction(beta=self.beta, min_prob=self.min_prob)
        full = min(self.full_epochs, context.epochs)
        return (full + (context.epochs - full) * kept) / context.epochs


class SelectiveBackprop(Selector):
    """Keep each sample with probability ``max(min_prob, percentile(loss) ** beta)``.

    Args:
        beta: selectivity β (:class:`SelectiveBackpropOptions`).
        seed: seeds the owned generator of the keep draws.
        **options: the other fields of :class:`SelectiveBackpropOptions`:
            ``min_prob``, ``history``, ``full_epochs``.

    Under DDP (W > 1 ranks), give every rank the same ``seed``. Each batch of b then
    keeps exactly ``keep_count(b, expected_keep_fraction(...))`` samples, drawn in
    proportion to the keep probabilities, so every rank takes the same optimizer
    steps; the history holds the last ``history`` losses of all ranks (gathered in
    rank order), so the state is identical on every rank and rank 0's
    :meth:`state_dict` resumes every rank. Local batch sizes must be equal (the
    lockstep samplers make them so); ``select`` raises ``ValueError`` otherwise.
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
        """True per-sample loss (a full forward pass without gradients), shape (B,);
        a DDP wrapper's inner module scores, with no collective."""
        model = unwrap(model)
        with scoring_mode(model), torch.no_grad():
            return sample_losses(model(x), y)

    def select(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        o = self.options
        if self.epoch < o.full_epochs:
            return None
        losses = self.score(model, x, y).float().cpu()  # (b,)
        self.samples_scored += len(y)
        replicated = world()[0] > 1
        everyone = _gather_losses(losses) if replicated else losses  # (W * b,), rank order
        self.recent_losses = torch.cat([self.recent_losses, everyone])[-o.history :]
        probs = keep_probabilities(losses, self.recent_losses, beta=o.beta, min_prob=o.min_prob)
        if replicated:  # a fixed count: every rank takes the same optimizer steps
            k = keep_count(len(y), expected_keep_fraction(beta=o.beta, min_prob=o.min_prob))
            return sample_proportional(probs, k, generator=self.generator).to(y.device)
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


def _gather_losses(losses: Tensor) -> Tensor:
    """Every rank's ``losses`` (b,), concatenated in rank order: (W * b,).

    Raises:
        ValueError: the ranks' batch sizes differ (on every rank alike).
    """
    sizes = all_gather(torch.tensor([len(losses)]))
    if (sizes != len(losses)).any():
        raise ValueError(
            f"Selective Backprop under DDP needs the same batch size on every rank, "
            f"got {sizes.tolist()} (a fixed keep count per batch keeps the ranks in step)"
        )
    return all_gather(losses)
