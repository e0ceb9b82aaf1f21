"""Learning-rate multipliers as pure functions of training progress in [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sievetrain.train.config import TrainConfig

__all__ = ["lr_multiplier"]


def lr_multiplier(
    schedule: str,
    progress: float,
    *,
    milestones: Sequence[float] = TrainConfig.milestones,
    gamma: float = TrainConfig.gamma,
) -> float:
    """Multiplier of the base learning rate at ``progress`` (fraction of the run done).

    The SRS paper keeps the schedule epoch-indexed (CIFAR-10: 320 epochs, lr / 10 at
    epochs 160 and 240, i.e. milestones 0.5 and 0.75), so a run on a subset of ratio
    r takes r times the optimizer steps of full data under the same schedule.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** sum(progress >= m for m in milestones)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    raise ValueError(f"unknown schedule {schedule!r}")
