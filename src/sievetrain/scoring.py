"""Scoring passes: run a model as a training step would, leaving no trace.

A base module: both epoch-level sampling (GRAD-MATCH's gradients) and batch-level
selection (SIFT's early exits, Selective Backprop's losses) score with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["scoring_mode"]


@contextmanager
def scoring_mode(model: nn.Module) -> Iterator[None]:
    """Score as the training pass would see the batch, without side effects.

    The model stays in training mode (batch norm normalises with the batch's own
    statistics), but batch-norm running statistics are not updated, and the
    global RNGs are restored afterwards (dropout draws leave no trace), so a
    scoring pass changes nothing a later training step reads.
    """
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        for m in norms:
            m.track_running_stats = False
        try:
            yield
        finally:
            for m in norms:
                m.track_running_stats = True
