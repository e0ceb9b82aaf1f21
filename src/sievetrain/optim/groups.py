"""A StochGradAdam param group as its step takes it: the tensors with gradients and
their states, as local tensors (a DTensor's shard, a complex tensor's real view) with
where each shard sits; and Adam's own step, which it takes at rate 1."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim.adam import adam
from torch.optim.optimizer import _default_to_fused_or_foreach

from sievetrain.optim.shards import Piece, dtensor_type, local

__all__ = ["Gathered", "adam_step", "gather", "numbers"]


class Gathered(NamedTuple):
    """A group's tensors with gradients, local and real, and their states."""

    params: list[Tensor]
    grads: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    max_exp_avg_sqs: list[Tensor] | None  # AMSGrad's running maxima; None without it
    state_steps: list[Tensor]  # float32 CPU counts
    pieces: list[Piece | None]  # where each shard sits in its tensor; None: not a shard


def gather(group: dict[str, Any], state: dict[Tensor, dict[str, Tensor]]) -> Gathered:
    """``group``'s parameters with gradients and their states, made on first use in
    ``state`` as Adam makes them (a DTensor's moments are DTensors placed as it is);
    a DTensor is stepped as its local shard, a complex tensor as its real view."""
    params, grads, exp_avgs, exp_avg_sqs, maxima, steps = [], [], [], [], [], []
    pieces: list[Piece | None] = []
    amsgrad, dtensor = group["amsgrad"], dtensor_type()
    for p in group["params"]:
        grad = p.grad
        if grad is None:
            continue
        if grad.is_sparse:
            raise RuntimeError("StochGradAdam does not support sparse gradients")
        own = state[p]
        if not own:
            # A float32 step count on the CPU, as torch.optim.Adam keeps it.
            own["step"] = torch.tensor(0.0, dtype=torch.float32)
            own["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            own["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad and "max_exp_avg_sq" not in own:  # also where amsgrad was turned on later
            own["max_exp_avg_sq"] = torch.zeros_like(own["exp_avg_sq"])
        tensors = (p, grad, own["exp_avg"], own["exp_avg_sq"], own.get("max_exp_avg_sq"))
        piece = None
        if dtensor is not None and isinstance(p, dtensor):
            tensors, piece = _shards(tensors)
        if p.is_complex():  # as Adam: the real and imaginary parts side by side
            tensors = [t if t is None else torch.view_as_real(t) for t in tensors]
            piece = piece and piece.as_real()
        params.append(tensors[0])
        grads.append(tensors[1])
        exp_avgs.append(tensors[2])
        exp_avg_sqs.append(tensors[3])
        maxima.append(tensors[4])
        steps.append(own["step"])
        pieces.append(piece)
    return Gathered(
        params, grads, exp_avgs, exp_avg_sqs, maxima if amsgrad else None, steps, pieces
    )


def _shards(tensors: tuple) -> tuple[list, Piece]:
    """A DTensor parameter's, its gradient's and its states' local shards (None stays
    None), and where the parameter's sits in it."""
    p, grad = tensors[:2]
    if grad.placements != p.placements:
        raise ValueError(
            f"a gradient placed {grad.placements!r} for a parameter placed "
            f"{p.placements!r}: StochGradAdam steps each rank's shard of both"
        )
    return [t if t is None else t.to_local() for t in tensors], local(p)[1]


def numbers(group: dict[str, Any]) -> dict[str, Any]:
    """The group's hyperparameters as the masked steps take them: numbers."""
    beta1, beta2 = (float(beta) for beta in group["betas"])
    return dict(
        lr=float(group["lr"]),
        beta1=beta1,
        beta2=beta2,
        eps=float(group["eps"]),
        weight_decay=float(group["weight_decay"]),
        maximize=group["maximize"],
    )


def adam_step(
    group: dict[str, Any],
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None,
    state_steps: list[Tensor],
) -> None:
    """``torch.optim.Adam``'s step with the group's switches and hyperparameters: the
    functional ``adam`` Adam calls, given what Adam gives it (a tensor ``lr`` or betas
    stays a tensor, which the per-tensor and fused steps compute with)."""
    foreach, fused, lr = group["foreach"], group["fused"], group["lr"]
    beta1, beta2 = group["betas"]
    if foreach is None and fused is None:  # adam's own default, decided here to know it
        _, foreach = _default_to_fused_or_foreach(params, False, use_fused=False)
        foreach = foreach and not isinstance(lr, Tensor)  # as adam decides for a tensor lr
    if foreach:  # Adam refuses tensors here (capturable=False): their values
        lr, beta1, beta2 = float(lr), float(beta1), float(beta2)
    adam(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs or [], state_steps,
        foreach=foreach, fused=fused, amsgrad=group["amsgrad"], lr=lr, beta1=beta1,
        beta2=beta2, eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
        maximize=group["maximize"],
    )  # fmt: skip
