"""Losses and per-sample scores of a model's outputs, for two kinds of target.

- Classification: logits ``(B, C)``, targets ``(B,)``.
- Token prediction (e.g. a masked language model): logits ``(B, T, V)``, targets
  ``(B, T)`` holding :data:`IGNORE_INDEX` where a position is not predicted.

A batch's loss is the mean over its predicted targets (every sample, or every
masked token, as BERT averages); a sample's loss or entropy is the mean over its
own targets, so that samples can be ranked whatever the task.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "batch_loss",
    "flatten_targets",
    "normalized_entropy",
    "sample_entropies",
    "sample_losses",
    "token_losses",
]

IGNORE_INDEX = -100  # target of a position that is not predicted (torch's default)


def flatten_targets(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The predicted targets as rows: ``(logits (N, C), targets (N,), sample (N,))``.

    ``sample`` gives the batch position each row comes from. Classification keeps
    all B rows; token prediction keeps the positions whose target is not
    :data:`IGNORE_INDEX`.
    """
    if logits.dim() == 2:
        return logits, y, torch.arange(len(y), device=y.device)
    if logits.dim() != 3 or y.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, C) with targets (B,) or logits (B, T, V) with targets "
            f"(B, T); got logits {tuple(logits.shape)} and targets {tuple(y.shape)}"
        )
    sample, position = (y != IGNORE_INDEX).nonzero(as_tuple=True)
    return logits[sample, position], y[sample, position], sample


def batch_loss(logits: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the batch's predicted targets (a scalar).

    With ``weight`` (B,), one non-negative weight per sample (not all zero), the mean
    is weighted: ``sum w l / sum w`` over the predicted targets, each target taking its
    sample's weight (as a coreset's weights enter the loss).
    """
    if weight is not None:
        rows, targets, sample = flatten_targets(logits, y)
        w = weight.to(rows.dtype)[sample]  # (N,)
        return (F.cross_entropy(rows, targets, reduction="none") * w).sum() / w.sum()
    if logits.dim() == 3:  # cross_entropy wants the classes in dimension 1
        return F.cross_entropy(logits.transpose(1, 2), y, ignore_index=IGNORE_INDEX)
    return F.cross_entropy(logits, y)


def sample_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of each sample, shape (B,): the mean over its predicted targets
    (0 for a sample with none)."""
    if logits.dim() == 2:
        return F.cross_entropy(logits, y, reduction="none")
    rows, targets, sample = flatten_targets(logits, y)
    return _per_sample_mean(F.cross_entropy(rows, targets, reduction="none"), sample, len(y))


def token_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of every target of ``y``, in float32 at least: (B,) for
    classification, (B, T) for tokens, 0 where a target is :data:`IGNORE_INDEX`."""
    if logits.dim() == 2:
        return F.cross_entropy(logits.float(), y, reduction="none")
    losses = F.cross_entropy(
        logits.float().transpose(1, 2), y, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return losses.masked_fill(y == IGNORE_INDEX, 0.0)


def sample_entropies(logits: Tensor, y: Tensor) -> Tensor:
    """Normalized prediction entropy of each sample, shape (B,); labels are not read,
    only which positions are predicted (the mean runs over those)."""
    if logits.dim() == 2:
        return normalized_entropy(logits)
    rows, _, sample = flatten_targets(logits, y)
    return _per_sample_mean(normalized_entropy(rows), sample, len(y))


def normalized_entropy(logits: Tensor) -> Tensor:
    """Entropy of each softmax prediction divided by log C, shape (B,) from (B, C).

    0 means fully confident (one class has all the probability), 1 uniform over
    the C classes. Computed from log-softmax, so it stays finite for saturated
    logits; a single class (C = 1) has entropy 0.
    """
    num_classes = logits.shape[-1]
    if num_classes < 2:
        return logits.new_zeros(logits.shape[:-1])
    # At least float32 (half precision loses the small probabilities), float64 kept.
    p = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    # p log p with the convention 0 log 0 = 0, where a plain product would give NaN
    return -torch.special.xlogy(p, p).sum(dim=-1) / math.log(num_classes)


def _per_sample_mean(values: Tensor, sample: Tensor, batch: int) -> Tensor:
    total = values.new_zeros(batch).index_add_(0, sample, values)
    count = values.new_zeros(batch).index_add_(0, sample, torch.ones_like(values))
    return total / count.clamp_min(1)
