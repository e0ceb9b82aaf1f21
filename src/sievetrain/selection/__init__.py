"""Batch-level selection: which samples of a batch get the backward pass.

The selector protocol is :class:`~sievetrain.selection.base.Selector`; every
selector here subclasses it.

:mod:`sievetrain.selection.greedy` holds Greedy SGD, the convex theory behind
SIFT, as a pure function on multinomial logistic regression.
"""

from __future__ import annotations

from sievetrain.scoring import scoring_mode
from sievetrain.selection.base import KeepAll, Selector
from sievetrain.selection.early_exit import EXIT_HEADS, EarlyExit
from sievetrain.selection.greedy import greedy_sgd
from sievetrain.selection.rho import Rho1, Rho1Options, RhoLoss, RhoLossOptions
from sievetrain.selection.selective_backprop import (
    SelectiveBackprop,
    SelectiveBackpropOptions,
    keep_probabilities,
)
from sievetrain.selection.sift import (
    SCORES,
    SIFT,
    RandomKeep,
    RandomKeepOptions,
    SIFTOptions,
    keep_count,
    select_top_k,
)

__all__ = [
    "EXIT_HEADS",
    "SCORES",
    "SIFT",
    "EarlyExit",
    "KeepAll",
    "RandomKeep",
    "RandomKeepOptions",
    "Rho1",
    "Rho1Options",
    "RhoLoss",
    "RhoLossOptions",
    "SIFTOptions",
    "SelectiveBackprop",
    "SelectiveBackpropOptions",
    "Selector",
    "keep_count",
    "greedy_sgd",
    "keep_probabilities",
    "scoring_mode",
    "select_top_k",
]
