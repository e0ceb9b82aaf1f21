"""The functional core of StochGradAdam: drawing the masks, and the update rule
with a readable per-tensor path and a ``torch._foreach_*`` path that give the
same numbers. Pure functions of their tensor arguments; they read no globals."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch._utils import _unflatten_dense_tensors

__all__ = ["MASK_BITS", "by_device_and_dtype", "draw_masks", "stochgradadam"]

MASK_BITS = 16  # random bits per mask entry: P(keep) = round(s * 2**16) / 2**16


def draw_masks(
    params: list[Tensor],
    sampling_rate: float,
    *,
    mask: str,
    generator_for: Callable[[torch.device], torch.Generator],
) -> list[Tensor] | None:
    """Masks ω shaped like ``params``, 1 where an entry is used and 0 where it is
    masked, in each parameter's dtype; None when the realised rate
    ``round(s * 2**16) / 2**16`` is 1 (nothing masked, no random numbers drawn).

    ``generator_for(device)`` returns the generator for a device (one on another
    device of the same type will do: its draws are moved). One draw per
    (device, dtype) covers all its tensors: 16 random bits per entry ("element")
    or per tensor ("tensor"), compared with ``round(s * 2**16)``. Random 64-bit
    integers are split into four 16-bit lanes, about 3x cheaper on CPU than a
    float uniform per entry. The masks are views of one flat buffer per group.
    """
    if round(sampling_rate * 2**MASK_BITS) >= 2**MASK_BITS:  # every lane is kept
        return None
    # keep when a uniform 16-bit lane, read as a signed int16, is below this (< 2**15)
    threshold = round(sampling_rate * 2**MASK_BITS) - 2 ** (MASK_BITS - 1)
    masks: list[Tensor | None] = [None] * len(params)
    for (device, dtype), positions in by_device_and_dtype(params).items():
        numels = [params[i].numel() for i in positions]
        generator = generator_for(device)  # may hold another device of the same type
        lanes = _random_int16(sum(numels) if mask == "element" else len(numels), generator)
        lanes = lanes.to(device)  # a no-op where the generator is on ``device``
        keep = torch.lt(lanes, threshold, out=torch.empty(lanes.shape, dtype=dtype, device=device))
        if mask == "tensor":  # one draw per tensor, spread over its entries
            keep = keep.repeat_interleave(torch.tensor(numels, device=device))
        # torch's own helper (used by DDP): views of ``keep`` shaped like the params
        views = _unflatten_dense_tensors(keep, [params[i] for i in positions])
        for i, view in zip(positions, views, strict=True):
            masks[i] = view
    return masks  # type: ignore[return-value]


def by_device_and_dtype(tensors: list[Tensor]) -> dict[tuple[torch.device, torch.dtype], list]:
    """Positions of ``tensors`` grouped by (device, dtype), in order of first appearance."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def _random_int16(n: int, generator: torch.Generator) -> Tensor:
    words = torch.randint(
        -(2**63), 2**63 - 1, (math.ceil(n / 4),), generator=generator, device=generator.device
    )
    return words.view(torch.int16)[:n]


def stochgradadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None,
    state_steps: list[Tensor],
    masks: list[Tensor] | None,
    *,
    foreach: bool,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    masked_state: str,
    scale: float,
    maximize: bool = False,
) -> None:
    """One StochGradAdam step, in place on ``params`` and the state tensors.

    ``masks`` are 0/1 tensors shaped like ``params`` in their dtypes (1 = entry
    used), or None to use every entry (exactly Adam's update). With
    ``masked_state="decay"`` they are overwritten with the masked gradient, so
    that it needs no buffer of its own. ``scale`` multiplies the kept gradient entries
    (``1 / s`` when rescaling). ``max_exp_avg_sqs``: AMSGrad's running maxima of the
    second moment, used in its place, or None; ``maximize``: ascend the objective.
    With masks, 16-bit tensors are updated in float32 and stored back: their ε
    (1e-8) would round to 0, and an entry masked before its first use would divide
    0 by 0. Reads no globals; the grads are not modified.
    """
    hp = _Step(lr, beta1, beta2, eps, weight_decay, masked_state == "freeze", scale)
    if maximize:
        grads = torch._foreach_neg(grads)
    lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, masks]
    update = _multi_tensor if foreach else _single_tensor
    if masks is not None and any(p.dtype in _LOW_PRECISION for p in params):
        _in_float32(update, lists, hp)
    else:
        update(*lists, hp=hp)


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _in_float32(update: Callable, lists: list, hp: _Step) -> None:
    """``update`` on float32 copies of the 16-bit tensors, the results stored back."""
    low = {i for i, p in enumerate(lists[0]) if p.dtype in _LOW_PRECISION}
    lifted = [
        x if x is None or k == 5 else [t.float() if i in low else t for i, t in enumerate(x)]
        for k, x in enumerate(lists)  # k == 5: the step counts, left as they are
    ]
    update(*lifted, hp=hp)
    for k in (0, 2, 3, 4):  # what a step writes: parameters, moments, maxima
        if lists[k] is not None:
            for i in low:
                lists[k][i].copy_(lifted[k][i])


@dataclass(frozen=True)
class _Step:
    """The hyperparameters of one step, typed, as both paths take them."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    freeze: bool  # masked entries skipped (True) or a zero gradient (False)
    scale: float  # multiplies the kept gradient entries


def _single_tensor(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, masks, hp: _Step
) -> None:
    for i, param in enumerate(params):
        grad, m, v, step_t = grads[i], exp_avgs[i], exp_avg_sqs[i], state_steps[i]
        keep = masks[i] if masks is not None else None  # ω
        step_t += 1
        if hp.weight_decay != 0:
            grad = grad.add(param, alpha=hp.weight_decay)
        step = step_t.item()
        step_size = hp.lr / (1 - hp.beta1**step)
        bias_correction2_sqrt = (1 - hp.beta2**step) ** 0.5
        if keep is None:  # every entry used: Adam, operation for operation
            m.lerp_(grad, 1 - hp.beta1)
            v.mul_(hp.beta2).addcmul_(grad, grad, value=1 - hp.beta2)
        elif hp.freeze:
            # Kept entries: Adam's update; masked entries: moments and parameter untouched.
            if hp.scale != 1:
                grad = grad * hp.scale
            m.addcmul_(grad - m, keep, value=1 - hp.beta1)
            v.addcmul_(grad * grad - v, keep, value=1 - hp.beta2)
        else:
            # ĝ = ω ⊙ g in the mask's buffer: a masked entry counts as a zero gradient.
            grad = keep.mul_(grad)
            if hp.scale != 1:
                grad.mul_(hp.scale)
            m.lerp_(grad, 1 - hp.beta1)
            v.mul_(hp.beta2).addcmul_(grad, grad, value=1 - hp.beta2)
        if max_exp_avg_sqs is not None:  # AMSGrad: the running maximum in v's place
            v = torch.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])
        denom = (v.sqrt() / bias_correction2_sqrt).add_(hp.eps)
        step_direction = m * keep if keep is not None and hp.freeze else m  # masked: no step
        param.addcdiv_(step_direction, denom, value=-step_size)


def _multi_tensor(*lists, hp: _Step) -> None:
    # foreach kernels take lists on one device and of one dtype.
    groups = by_device_and_dtype(lists[0])
    if len(groups) == 1:  # the common case: no copies of the lists
        _multi_tensor_group(*lists, hp)
        return
    for positions in groups.values():
        _multi_tensor_group(
            *([x[i] for i in positions] if x is not None else None for x in lists), hp
        )


def _multi_tensor_group(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, masks, hp: _Step
) -> None:
    # The same operations as _single_tensor, in the same order, on lists.
    # One CPU scalar tensor rather than a Python 1 wrapped again for every step count.
    torch._foreach_add_(state_steps, torch.tensor(1.0), alpha=1.0)
    if hp.weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=hp.weight_decay)
    steps = [s.item() for s in state_steps]
    step_sizes = [-hp.lr / (1 - hp.beta1**step) for step in steps]
    bias_correction2_sqrt = [(1 - hp.beta2**step) ** 0.5 for step in steps]
    if masks is None:  # every entry used: Adam, operation for operation
        torch._foreach_lerp_(exp_avgs, grads, 1 - hp.beta1)
        torch._foreach_mul_(exp_avg_sqs, hp.beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - hp.beta2)
        del grads  # before the denominator takes its own buffer
    elif hp.freeze:
        if hp.scale != 1:
            grads = torch._foreach_mul(grads, hp.scale)
        diff = torch._foreach_sub(grads, exp_avgs)
        torch._foreach_addcmul_(exp_avgs, diff, masks, value=1 - hp.beta1)
        diff = torch._foreach_sub(torch._foreach_mul(grads, grads), exp_avg_sqs)
        torch._foreach_addcmul_(exp_avg_sqs, diff, masks, value=1 - hp.beta2)
        del diff, grads
    else:
        # ĝ = ω ⊙ g in the masks' buffers: a masked entry counts as a zero gradient.
        torch._foreach_mul_(masks, grads)
        grads = masks
        if hp.scale != 1:
            torch._foreach_mul_(grads, hp.scale)
        torch._foreach_lerp_(exp_avgs, grads, 1 - hp.beta1)
        torch._foreach_mul_(exp_avg_sqs, hp.beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - hp.beta2)
    if max_exp_avg_sqs is not None:  # AMSGrad: the running maximum in v's place
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        exp_avg_sqs = max_exp_avg_sqs
    denom = torch._foreach_sqrt(exp_avg_sqs)
    if masks is not None and hp.freeze:
        exp_avgs = torch._foreach_mul(exp_avgs, masks)  # masked entries: a zero step
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, hp.eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)
