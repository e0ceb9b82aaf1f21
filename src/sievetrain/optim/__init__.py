"""Optimizers: StochGradAdam, and a factory over it and torch's own baselines."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from sievetrain.optim.baselines import AdamOptions, RMSpropOptions, SGDOptions
from sievetrain.optim.functional import draw_masks, stochgradadam
from sievetrain.optim.optimizer import StochGradAdam, StochGradAdamOptions
from sievetrain.options import Options

__all__ = [
    "OPTIMIZERS",
    "AdamOptions",
    "RMSpropOptions",
    "SGDOptions",
    "StochGradAdam",
    "StochGradAdamOptions",
    "build_optimizer",
    "draw_masks",
    "stochgradadam",
]

# Optimizer name -> (its options, its class).
OPTIMIZERS: dict[str, tuple[type[Options], type[torch.optim.Optimizer]]] = {
    "sgd": (SGDOptions, torch.optim.SGD),
    "adam": (AdamOptions, torch.optim.Adam),
    "rmsprop": (RMSpropOptions, torch.optim.RMSprop),
    "stochgradadam": (StochGradAdamOptions, StochGradAdam),
}


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], *, seed: int | None = None, **options: Any
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params``; unspecified options take their defaults.

    ``seed`` seeds a random optimizer (StochGradAdam's masks); the others ignore it.

    Raises:
        ValueError: unknown optimizer or option, or an invalid value, naming it.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    kind, cls = OPTIMIZERS[name]
    unknown = sorted(set(options) - set(kind.names()))
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for optimizer {name!r}; "
            f"known: {', '.join(kind.names())}"
        )
    hyperparameters = kind(**options).to_dict()
    if cls is StochGradAdam:
        return StochGradAdam(params, seed=seed, **hyperparameters)
    return cls(params, **hyperparameters)
