"""The training configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainConfig"]

SCHEDULES = ("constant", "step", "cosine")
SCHEDULE_UNITS = ("epoch", "step")


@dataclass(frozen=True)
class TrainConfig:
    """What the trainer needs besides the model, data, sampler, selector and optimizer."""

    epochs: int = 10  # passes over the epoch-level sampler's (sub)set
    batch_size: int = 128  # samples per optimizer step, before batch-level selection
    eval_batch_size: int = 1024  # samples per forward pass in evaluation
    schedule: str = "step"  # lr multiplier shape: constant | step | cosine
    schedule_unit: str = "epoch"  # "epoch": lr set at each epoch start from epoch/epochs (paper);
    # "step": lr set every optimizer step from step/total_steps (not in the paper)
    # step schedule: fractions of the run where lr *= gamma
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1  # step schedule: lr multiplier at each milestone
    target_accuracy: float | None = None  # fraction in (0, 1]; time to reach it is reported
    device: str = "cpu"  # torch device string

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"invalid {name}={value!r}: must be a positive integer")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.schedule_unit not in SCHEDULE_UNITS:
            raise ValueError(
                f"unknown schedule_unit {self.schedule_unit!r}; known: {', '.join(SCHEDULE_UNITS)}"
            )
        if any(not 0 < m <= 1 for m in self.milestones):
            raise ValueError(f"invalid milestones={self.milestones!r}: each must be in (0, 1]")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"invalid gamma={self.gamma!r}: must be in (0, 1]")
        t = self.target_accuracy
        if t is not None and (math.isnan(t) or not 0 < t <= 1):
            raise ValueError(f"invalid target_accuracy={t!r}: must be a fraction in (0, 1]")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
