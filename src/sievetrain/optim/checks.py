"""StochGradAdam's checks: of its arguments, and of a saved state before any of it is
loaded. Each raises a ValueError that names the bad value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["IMPLEMENTATION", "check_saved_state", "check_switches", "generator_states", "plain"]

# How a step is computed, not what it computes: torch.optim.Adam's switches, defaults.
IMPLEMENTATION = {"foreach": None, "fused": None, "capturable": False, "differentiable": False}


def generator_states(saved: Any) -> dict[str, Tensor]:
    """Saved generator states keyed by device type, as CPU byte tensors; ValueError
    for a bad key or state. Old states keyed ``"cuda:N"`` map to ``"cuda"``."""
    if not isinstance(saved, dict):
        raise ValueError(f"generators must be a dict of device to state, got {type(saved)}")
    states: dict[str, Tensor] = {}
    names: dict[str, str] = {}
    for name, state in saved.items():
        try:
            kind = torch.device(name).type if isinstance(name, str) else None
        except RuntimeError:
            kind = None
        if kind is None:
            raise ValueError(f"invalid generator device {name!r}: expected 'cpu', 'cuda', ...")
        if kind in names:
            raise ValueError(
                f"generators {names[kind]!r} and {name!r} are both for device type {kind!r}: "
                f"one stream per device type"
            )
        if not isinstance(state, Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
            raise ValueError(
                f"invalid generator state for device {name!r}: expected a 1-D byte tensor"
            )
        state = state.detach().to("cpu", copy=True)  # set_state takes a CPU ByteTensor
        _try_state(kind, name, state)
        names[kind], states[kind] = name, state
    return states


def _try_state(kind: str, name: str, state: Tensor) -> None:
    """ValueError if a generator of device type ``kind`` refuses ``state``; unchecked
    where this process cannot make one (no such device here)."""
    try:
        scratch = torch.Generator(device=kind)
    except RuntimeError:
        return
    try:
        scratch.set_state(state)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"invalid generator state for device {name!r}: {error}") from None


def check_saved_state(
    state_dict: dict[str, Any], required: tuple[str, ...], check_group: Callable[[dict], None]
) -> None:
    """ValueError naming what a StochGradAdam ``state_dict`` lacks (the top-level seed and
    generators, the ``required`` options of every param group), or from ``check_group``
    on the first bad group."""
    top = [repr(k) for k in ("state", "param_groups", "seed", "generators") if k not in state_dict]
    missing = [", ".join(top)] if top else []
    for i, group in enumerate(state_dict.get("param_groups", [])):
        if lacking := [repr(k) for k in required if k not in group]:
            missing.append(f"param group {i}'s {', '.join(lacking)}")
    if missing:
        raise ValueError(
            f"not a StochGradAdam state_dict (another optimizer's?): it lacks {'; '.join(missing)}"
        )
    for group in state_dict["param_groups"]:
        check_group(group)


def plain(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with one-element tensors (a tensor lr, as Adam takes) read as
    numbers, also inside tuples; ValueError naming a larger tensor."""

    def number(name: str, value: Any) -> Any:
        if not isinstance(value, Tensor):
            return value
        if value.numel() != 1:
            raise ValueError(f"invalid {name}={value!r}: must be a number or a one-element tensor")
        return value.item()

    return {
        name: tuple(number(name, v) for v in value)
        if isinstance(value, tuple | list)
        else number(name, value)
        for name, value in options.items()
    }


def check_switches(switches: dict[str, Any]) -> None:
    """ValueError naming a bad implementation switch (see :data:`IMPLEMENTATION`)."""
    for name in ("foreach", "fused"):
        if switches[name] is not None and not isinstance(switches[name], bool):
            raise ValueError(f"{name} must be True, False or None, got {switches[name]!r}")
    for name in ("capturable", "differentiable"):
        if switches[name] is not False:
            raise ValueError(
                f"invalid {name}={switches[name]!r}: StochGradAdam supports only {name}=False"
            )
    if switches["foreach"] and switches["fused"]:
        raise ValueError("invalid foreach=True with fused=True: choose one of them")
