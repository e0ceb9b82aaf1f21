"""Evaluation metrics as pure functions of tensors."""

from __future__ import annotations

import torch
from torch import Tensor

from sievetrain.losses import normalized_entropy

__all__ = ["normalized_entropy", "spearman"]


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors of equal length: the Pearson
    correlation of their ranks, tied values sharing the mean of their ranks (as
    ``scipy.stats.spearmanr`` does). NaN when either is constant or has fewer
    than 2 entries.

    Raises:
        ValueError: the tensors are not 1-D or differ in shape.
    """
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"expected two 1-D tensors of one length, got {a.shape} and {b.shape}")
    if len(a) < 2 or bool((a == a[0]).all()) or bool((b == b[0]).all()):
        return float("nan")
    return torch.corrcoef(torch.stack([_average_ranks(a), _average_ranks(b)]))[0, 1].item()


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of ``x`` in float64, each group of tied values given the mean
    of the ranks it spans."""
    values, order = x.double().sort(stable=True)
    _, group, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    # A group of c ties after s smaller values spans ranks s+1..s+c: mean s + (c + 1) / 2.
    starts = counts.cumsum(0) - counts
    mean_rank = starts.double() + (counts.double() + 1) / 2
    ranks = torch.empty_like(values)
    ranks[order] = mean_rank[group]
    return ranks
