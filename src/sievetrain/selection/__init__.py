"""Batch-level selection: which samples of a batch get the backward pass.

A selector is called by the trainer once per batch, before the forward pass with
gradients, as ``selector.select(model, x, y)``. It returns the positions in the
batch to keep (an int64 tensor) or ``None`` for "keep every sample". Any forward
work it does to decide (an early-exit scoring pass, a no-grad loss pass) is
counted inside the selection time of the run, and reported through ``stats()``
(``samples_forwarded_partially`` for passes that stop at an early exit,
``samples_forwarded_no_grad`` for whole forward passes without gradients).

Optional parts the trainer uses when present:

- ``set_epoch(epoch)``: called at the start of every epoch.
- ``score(model, x, y) -> (B,)``: the selector's score of each sample, without
  side effects; the trainer measures after every epoch how well it ranks the
  true per-sample losses on held-out batches (Spearman correlation).
- ``accumulates = True``: kept samples are gathered into full batches before a
  backward pass (the remainder is trained at the end of the epoch).

:mod:`sievetrain.selection.greedy` holds Greedy SGD, the convex theory behind
SIFT, as a pure function on multinomial logistic regression.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from sievetrain.selection.early_exit import EXIT_HEADS, EarlyExit, scoring_mode
from sievetrain.selection.greedy import greedy_sgd
from sievetrain.selection.selective_backprop import SelectiveBackprop, keep_probabilities
from sievetrain.selection.sift import SCORES, SIFT, RandomKeep, keep_count, select_top_k

__all__ = [
    "EXIT_HEADS",
    "SCORES",
    "SIFT",
    "EarlyExit",
    "KeepAll",
    "RandomKeep",
    "SelectiveBackprop",
    "Selector",
    "keep_count",
    "greedy_sgd",
    "keep_probabilities",
    "scoring_mode",
    "select_top_k",
]


@runtime_checkable
class Selector(Protocol):
    def select(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Positions of ``x`` (shape (B, ...)) to backpropagate, or None for all."""

    def stats(self) -> dict[str, Any]:
        """Counters to merge into the run's results (e.g. samples scored)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class KeepAll:
    """The identity selector: every sample of every batch is backpropagated."""

    def select(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
