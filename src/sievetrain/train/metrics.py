"""Evaluation metrics as pure functions of tensors."""

from __future__ import annotations

import torch
from torch import Tensor

from sievetrain.losses import normalized_entropy

__all__ = ["normalized_entropy", "spearman"]


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors of equal length (ties ranked by
    position, which is exact for continuous values); NaN when either is constant
    or has fewer than 2 entries."""
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"expected two 1-D tensors of one length, got {a.shape} and {b.shape}")
    if len(a) < 2 or bool((a == a[0]).all()) or bool((b == b[0]).all()):
        return float("nan")
    ra, rb = (x.double().argsort().argsort().double() for x in (a, b))
    return torch.corrcoef(torch.stack([ra, rb]))[0, 1].item()
