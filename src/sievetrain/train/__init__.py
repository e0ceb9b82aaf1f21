"""Training: the loop, its configuration, schedules, accounting, evaluation and summary."""

from sievetrain.train.accounting import PHASES, Accounting
from sievetrain.train.config import TrainConfig
from sievetrain.train.env import environment
from sievetrain.train.metrics import normalized_entropy
from sievetrain.train.schedules import lr_multiplier
from sievetrain.train.summary import RunSummary, time_to_target
from sievetrain.train.trainer import Trainer

__all__ = [
    "PHASES",
    "Accounting",
    "RunSummary",
    "TrainConfig",
    "Trainer",
    "environment",
    "lr_multiplier",
    "normalized_entropy",
    "time_to_target",
]
