"""Evaluation off the training clock, as pure functions of a model and a loader."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from sievetrain.distributed import all_reduce
from sievetrain.losses import flatten_targets, sample_losses
from sievetrain.scoring import scoring_mode
from sievetrain.selection.base import Selector
from sievetrain.train.metrics import normalized_entropy, spearman

__all__ = ["RANK_BATCHES", "evaluate", "rank_correlation"]

RANK_BATCHES = 8  # held-out batches on which a selector's ranking is measured each epoch


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device) -> dict[str, float]:
    """Accuracy (fraction of predicted targets), mean cross-entropy and mean
    normalized prediction entropy (0 = confident, 1 = uniform) of ``model`` in
    evaluation mode over ``batches`` of ``(x, y, idx)``.

    Under a process group each rank passes its shard of the test set: the sums are
    all-reduced, so every rank returns the figures of the whole set."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    entropy_sum = torch.zeros((), device=device)
    n = 0
    for x, y, _ in batches:
        x, y = x.to(device), y.to(device)
        logits, y, _ = flatten_targets(model(x), y)  # (N, C), (N,)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        entropy_sum += normalized_entropy(logits).sum()
        correct += (logits.argmax(dim=1) == y).sum()
        n += len(y)
    # float64 holds the float32 sums and the counts exactly: one collective for all four
    totals = torch.stack([correct.double(), loss_sum.double(), entropy_sum.double()]).cpu()
    correct_, loss_, entropy_, n_ = all_reduce(torch.cat([totals, totals.new_tensor([n])]))
    return {
        "test_accuracy": correct_.item() / n_.item(),
        "test_loss": loss_.item() / n_.item(),
        "test_entropy": entropy_.item() / n_.item(),
    }


@torch.no_grad()
def rank_correlation(
    selector: Selector,
    model: nn.Module,
    batches: Iterable,
    device: torch.device,
    *,
    limit: int = RANK_BATCHES,
) -> float | None:
    """Mean Spearman correlation, over the first ``limit`` of ``batches`` (held-out,
    training-sized), between the selector's scores and the true per-sample losses,
    both computed as a training step sees them (training mode, batch statistics).
    None when the selector does not score. The model is left in evaluation mode."""
    model.train()
    values = []
    for i, (x, y, _) in enumerate(batches):
        if i == limit:
            break
        x, y = x.to(device), y.to(device)
        scores = selector.score(model, x, y)
        if scores is None:
            break
        with scoring_mode(model):
            losses = sample_losses(model(x), y)
        values.append(spearman(scores.cpu(), losses.cpu()))
    model.eval()
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else None
