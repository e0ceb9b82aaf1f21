"""Optimizers: StochGradAdam, and a factory over it and torch's own baselines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from sievetrain.optim.functional import draw_masks, stochgradadam
from sievetrain.optim.stochgradadam import StochGradAdam

__all__ = ["OPTIMIZER_DEFAULTS", "StochGradAdam", "build_optimizer", "draw_masks", "stochgradadam"]

_ADAM = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}

# Hyperparameters each optimizer accepts, with defaults (units: lr per step).
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    # Nesterov SGD as in the SRS paper's CIFAR-10 recipe; lr tuned for batch 128.
    "sgd": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "adam": dict(_ADAM),
    # torch.optim.RMSprop at lr 1e-3, the rate Adam uses (torch's own default is 1e-2).
    "rmsprop": {"lr": 1e-3, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "weight_decay": 0.0},
    "stochgradadam": {
        **_ADAM,
        "sampling_rate": 0.8,  # s: probability that a gradient entry is used at a step
        "mask": "element",  # "element" (paper) or "tensor": one draw per parameter tensor
        "masked_state": "decay",  # "decay" (paper): zero gradient; "freeze": skip the entry
        "rescale": False,  # divide kept entries by s (ours; the paper does not)
    },
}


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], *, seed: int | None = None, **options: Any
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params``; unspecified options take their defaults.

    ``seed`` seeds a random optimizer (StochGradAdam's masks); the others ignore it.

    Raises:
        ValueError: unknown optimizer or option, or an invalid value, naming it.
    """
    if name not in OPTIMIZER_DEFAULTS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZER_DEFAULTS)}")
    opts = _resolve(name, options)
    if name == "sgd":
        return torch.optim.SGD(params, **opts)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, **opts)
    betas = (opts.pop("beta1"), opts.pop("beta2"))
    if name == "adam":
        return torch.optim.Adam(params, betas=betas, **opts)
    return StochGradAdam(params, betas=betas, seed=seed, **opts)


def _resolve(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    defaults = OPTIMIZER_DEFAULTS[name]
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(
            f"unknown option {sorted(unknown)[0]!r} for optimizer {name!r}; "
            f"known: {', '.join(defaults)}"
        )
    opts = {**defaults, **options}
    if not opts["lr"] >= 0:  # also rejects NaN
        raise ValueError(f"invalid learning rate lr={opts['lr']!r}: must be >= 0")
    return opts
