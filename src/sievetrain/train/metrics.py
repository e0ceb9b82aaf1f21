"""Evaluation metrics as pure functions of a batch of logits."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["normalized_entropy"]


def normalized_entropy(logits: Tensor) -> Tensor:
    """Entropy of each softmax prediction divided by log C, shape (B,) from (B, C).

    0 means fully confident (one class has all the probability), 1 uniform over
    the C classes. Computed from log-softmax, so it stays finite for saturated
    logits; a single class (C = 1) has entropy 0.
    """
    num_classes = logits.shape[-1]
    if num_classes < 2:
        return logits.new_zeros(logits.shape[:-1])
    p = torch.softmax(logits.float(), dim=-1)  # (B, C)
    # p log p with the convention 0 log 0 = 0, where a plain product would give NaN
    return -torch.special.xlogy(p, p).sum(dim=-1) / math.log(num_classes)
