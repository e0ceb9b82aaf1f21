"""Batch-level selection: which samples of a batch get the backward pass.

A selector is called by the trainer once per batch, before the forward pass with
gradients, as ``selector.select(model, x, y)``. It returns the positions in the
batch to keep (an int64 tensor) or ``None`` for "keep every sample". Any forward
work it does to decide (an early-exit scoring pass, a no-grad loss pass) is
counted inside the selection time of the run, and reported through ``stats()``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["Selector", "KeepAll"]


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
