"""Greedy SGD on multinomial logistic regression: the convex theory behind SIFT.

Each step draws R candidate samples uniformly (with replacement), scores them by
an exact or approximate loss, and takes a batch-size-1 SGD step on the exact
gradient of the highest-scoring one. With R = 1 it is plain SGD, on the same
code path. The model is linear softmax, ``logits = x @ weight + bias``, started
at zero, so the average training loss is a convex function of the parameters.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["SCORES", "approx_softmax_losses", "greedy_sgd", "softmax_gradient", "softmax_losses"]

SCORES: tuple[str, ...] = ("exact", "approx")


def softmax_losses(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Per-sample cross-entropy of a linear softmax model.

    Args:
        x: Features, (N, D). y: Labels, int64 (N,). weight: (D, C). bias: (C,).

    Returns:
        Losses in nats, (N,).
    """
    return F.cross_entropy(x @ weight + bias, y, reduction="none")


def approx_softmax_losses(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    coords: torch.Tensor,
) -> torch.Tensor:
    """Cheap stand-in for :func:`softmax_losses`, the role an early exit plays in SIFT.

    The logits are computed from the k feature coordinates ``coords`` only and
    rescaled by D / k: over a uniform draw of ``coords`` that is an unbiased
    estimate of ``x @ weight``, but :func:`greedy_sgd` draws it once per run, as an
    early exit is fixed, so within a run the error is systematic. It costs k / D of
    the exact logits' multiply-adds (the softmax over C classes is the same).

    Args:
        x, y, weight, bias: As :func:`softmax_losses`.
        coords: Feature indices, int64 (k,).

    Returns:
        Approximate losses in nats, (N,).
    """
    scale = x.shape[1] / coords.numel()
    logits = scale * (x[:, coords] @ weight[coords]) + bias  # (N, C)
    return F.cross_entropy(logits, y, reduction="none")


def softmax_gradient(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact gradient of one sample's loss, in closed form.

    With p = softmax(x @ weight + bias) and e_y the one-hot label, the gradient
    is (outer(x, p - e_y), p - e_y). The closed form costs one outer product and
    builds no autograd graph, which matters in a loop of 10^4 single-sample steps.

    Args:
        x: One sample's features, (D,). y: Its label, int64 scalar tensor.
        weight: (D, C). bias: (C,).

    Returns:
        ``(grad_weight (D, C), grad_bias (C,))``.
    """
    delta = torch.softmax(x @ weight + bias, dim=0)  # (C,)
    delta.index_put_((y,), delta.new_tensor(-1.0), accumulate=True)  # p - e_y, no host sync
    return torch.outer(x, delta), delta


def greedy_sgd(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    candidates: int,
    steps: int,
    lr: float,
    generator: torch.Generator,
    score: str = "exact",
    approx_fraction: float = 0.5,
    record_every: int = 100,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Run Greedy SGD (plain SGD when ``candidates == 1``) from zero parameters.

    Randomness: the candidates of every step are drawn first, as
    ``torch.randint(N, (steps, candidates), generator=generator)``, then the
    approximate score's coordinates as ``torch.randperm(D, generator=generator)[:k]``
    with k = max(1, round(approx_fraction * D)), whatever ``score`` is. So runs
    that differ only in ``score`` or ``approx_fraction`` see the same candidates.

    Args:
        x: Features, float (N, D); the parameters take its device and dtype.
        y: Labels, int64 (N,).
        candidates: R, samples drawn per step, >= 1.
        steps: Number of SGD steps (gradients of one sample each), >= 1.
        lr: Step size, > 0.
        generator: The only source of randomness, on ``x``'s device.
        score: ``"exact"`` picks the candidate with the largest loss,
            ``"approx"`` the one with the largest :func:`approx_softmax_losses`.
        approx_fraction: Fraction of feature coordinates the approximate score reads, in (0, 1].
        record_every: Steps between records of the average training loss, >= 1.
        num_classes: C; None means ``y.max() + 1``.

    Returns:
        ``iterations`` (K,) int64: steps taken at each record, from 0, ending at ``steps``;
        ``loss`` (K,): average loss over all of ``x``; ``candidates`` (steps, R) and
        ``chosen`` (steps,): sample indices; ``argmax_agreement``: fraction of steps
        whose chosen candidate has the largest exact loss among the candidates
        (1.0 for ``"exact"``; to measure it ``"approx"`` also scores the candidates
        exactly, so its wall time overstates the method's cost); ``weight`` (D, C)
        and ``bias`` (C,): the final parameters.
    """
    for name, value in (
        ("candidates", candidates),
        ("steps", steps),
        ("record_every", record_every),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(lr, bool) or not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if not 0 < approx_fraction <= 1:
        raise ValueError(f"approx_fraction must be in (0, 1], got {approx_fraction!r}")
    if (
        x.ndim != 2
        or not x.is_floating_point()
        or y.shape != (x.shape[0],)
        or y.dtype != torch.int64
    ):
        raise ValueError(
            f"x must be float (N, D) and y int64 (N,), got {x.dtype} {tuple(x.shape)} "
            f"and {y.dtype} {tuple(y.shape)}"
        )
    n, d = x.shape
    c = int(y.max()) + 1 if num_classes is None else num_classes
    if c < 2 or int(y.max()) >= c:
        raise ValueError(f"num_classes must be >= 2 and exceed every label, got {num_classes!r}")

    drawn = torch.randint(n, (steps, candidates), generator=generator, device=x.device)
    k = max(1, round(approx_fraction * d))
    coords = torch.randperm(d, generator=generator, device=x.device)[:k]
    weight = x.new_zeros(d, c)
    bias = x.new_zeros(c)
    picks = []  # position of the chosen candidate at each step, 0-dim tensors: no host sync
    agree = torch.zeros((), dtype=torch.int64, device=x.device)
    iterations, losses = [], []
    for t in range(steps):
        if t % record_every == 0:
            iterations.append(t)
            losses.append(softmax_losses(x, y, weight, bias).mean())
        xs, ys = x[drawn[t]], y[drawn[t]]  # (R, D), (R,)
        if score == "exact":
            pick = softmax_losses(xs, ys, weight, bias).argmax()
        else:
            pick = approx_softmax_losses(xs, ys, weight, bias, coords).argmax()
            # A diagnostic, not part of the method: is the pick an exact argmax? Ties count.
            exact = softmax_losses(xs, ys, weight, bias)
            agree += exact[pick] == exact.max()
        picks.append(pick)
        grad_weight, grad_bias = softmax_gradient(xs[pick], ys[pick], weight, bias)
        weight.sub_(grad_weight, alpha=lr)
        bias.sub_(grad_bias, alpha=lr)
    iterations.append(steps)
    losses.append(softmax_losses(x, y, weight, bias).mean())
    return {
        "iterations": torch.tensor(iterations),
        "loss": torch.stack(losses),
        "candidates": drawn,
        "chosen": drawn.gather(1, torch.stack(picks)[:, None]).squeeze(1),
        "argmax_agreement": 1.0 if score == "exact" else agree.item() / steps,
        "weight": weight,
        "bias": bias,
    }
