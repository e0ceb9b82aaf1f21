"""StochGradAdam's checks: of its arguments, and of a saved state before any of it is
loaded. Each raises a ValueError that names the bad value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "IMPLEMENTATION",
    "STREAM",
    "check_saved_state",
    "check_switches",
    "generator_states",
    "plain",
    "saved_stream",
    "stream_entry",
    "tensors_kept",
]

# How a step is computed, not what it computes: torch.optim.Adam's switches, defaults.
IMPLEMENTATION = {"foreach": None, "fused": None, "capturable": False, "differentiable": False}

# The key of the mask stream (seed and generator states) in a saved state's first
# param group: all that torch.distributed.checkpoint's get_state_dict keeps of an
# optimizer's state is its "state" and its "param_groups", whose keys it copies.
STREAM = "mask_stream"


def stream_entry(seed: int | None, states: dict[str, Tensor]) -> dict[str, Any]:
    """The mask stream as a saved param group holds it: no tensors (checkpoint loaders
    move a group's tensors to the parameters' device), the generator states as bytes."""
    return {"seed": seed, "generators": {k: state.numpy().tobytes() for k, state in states.items()}}


def saved_stream(state_dict: dict[str, Any]) -> tuple[Any, Any]:
    """The saved seed and generator states: at the top level of ``state_dict`` where it
    has them (``StochGradAdam.state_dict()``), else in its first param group (a state
    through ``torch.distributed.checkpoint``). Call after :func:`check_saved_state`."""
    if "seed" in state_dict or "generators" in state_dict:
        return state_dict["seed"], state_dict["generators"]
    entry = state_dict["param_groups"][0][STREAM]
    if not isinstance(entry, dict) or set(entry) != {"seed", "generators"}:
        raise ValueError(f"invalid {STREAM}: expected a dict of seed and generators")
    return entry["seed"], entry["generators"]


def generator_states(saved: Any) -> dict[str, Tensor]:
    """Saved generator states keyed by device type, as CPU byte tensors; ValueError
    for a bad key or state. Old states keyed ``"cuda:N"`` map to ``"cuda"``; a state
    may be bytes (from a param group) or a byte tensor (from the top level)."""
    if not isinstance(saved, dict):
        raise ValueError(f"generators must be a dict of device to state, got {type(saved)}")
    states: dict[str, Tensor] = {}
    names: dict[str, str] = {}
    for name, state in saved.items():
        if isinstance(state, bytes | bytearray):
            state = torch.frombuffer(bytearray(state), dtype=torch.uint8)
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
    """ValueError naming what a StochGradAdam ``state_dict`` lacks (the seed and generators,
    at the top level or in the first param group; the ``required`` options of every
    param group), or from ``check_group`` on the first bad group."""
    top = [k for k in ("state", "param_groups", "seed", "generators") if k not in state_dict]
    groups = state_dict.get("param_groups") or [{}]
    if "seed" in top and "generators" in top and groups[0].get(STREAM) is not None:
        top = top[:-2]  # the stream travelled in the first param group
    missing = [", ".join(map(repr, top))] if top else []
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


def tensors_kept(options: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` that hold tensors, each one-element tensor as a 0-dim tensor, also
    inside tuples: kept as tensors, as ``torch.optim.Adam`` keeps them, which computes
    its per-tensor and fused steps with them (in their dtype). Check with :func:`plain`
    first."""

    def scalar(value: Any) -> Any:  # torch.optim.optimizer._to_scalar
        return value.squeeze() if isinstance(value, Tensor) and value.dim() != 0 else value

    kept = {}
    for name, value in options.items():
        if isinstance(value, tuple | list) and any(isinstance(v, Tensor) for v in value):
            kept[name] = tuple(scalar(v) for v in value)
        elif isinstance(value, Tensor):
            kept[name] = scalar(value)
    return kept


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
