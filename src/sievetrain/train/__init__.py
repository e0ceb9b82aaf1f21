"""Training: the loop, its configuration, schedules and accounting."""

from sievetrain.train.accounting import PHASES, Accounting
from sievetrain.train.config import TrainConfig
from sievetrain.train.env import environment
from sievetrain.train.metrics import normalized_entropy
from sievetrain.train.schedules import lr_multiplier
from sievetrain.train.trainer import Trainer, time_to_target

__all__ = [
    "PHASES",
    "Accounting",
    "TrainConfig",
    "Trainer",
    "environment",
    "lr_multiplier",
    "normalized_entropy",
    "time_to_target",
]
