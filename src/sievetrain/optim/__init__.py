"""Optimizers: a factory over torch's own, the seam later optimizers plug into."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["OPTIMIZER_DEFAULTS", "build_optimizer"]

# Hyperparameters each optimizer accepts, with defaults (units: lr per step).
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    # Nesterov SGD as in the SRS paper's CIFAR-10 recipe; lr tuned for batch 128.
    "sgd": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
}


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], **options: Any
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params``; unspecified options take their defaults.

    Raises:
        ValueError: unknown optimizer or option, naming it.
    """
    if name not in OPTIMIZER_DEFAULTS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZER_DEFAULTS)}")
    opts = _resolve(name, options)
    if name == "sgd":
        return torch.optim.SGD(params, **opts)
    betas = (opts.pop("beta1"), opts.pop("beta2"))
    return torch.optim.Adam(params, betas=betas, **opts)


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
