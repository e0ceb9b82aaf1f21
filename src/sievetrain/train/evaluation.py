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
    """Accuracy (fraction of predicted targets), mean cross-entropy, mean normalized
    prediction entropy (0 = confident, 1 = uniform), and the balanced and worst-class
    accuracy (the mean and the minimum over the classes present in the targets of each
    class's accuracy) of ``model`` in evaluation mode over ``batches`` of ``(x, y, idx)``.

    Under a process group each rank passes its shard of the test set: the sums are
    all-reduced, so every rank returns the figures of the whole set."""
    model.eval()
    sums = torch.zeros(2, device=device)  # loss, entropy
    per_class = None  # (2, C): targets and correct predictions per class
    for x, y, _ in batches:
        x, y = x.to(device), y.to(device)
        logits, y, _ = flatten_targets(model(x), y)  # (N, C), (N,)
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += normalized_entropy(logits).sum()
        if per_class is None:
            per_class = torch.zeros(2, logits.shape[1], dtype=torch.long, device=device)
        per_class[0] += torch.bincount(y, minlength=logits.shape[1])
        per_class[1] += torch.bincount(y[logits.argmax(dim=1) == y], minlength=logits.shape[1])
    if per_class is None:
        raise ValueError("no test samples to evaluate on")
    # float64 holds the float32 sums and the counts exactly: one collective for all
    totals = all_reduce(torch.cat([sums.double(), per_class.double().flatten()]).cpu())
    loss, entropy, (targets, correct) = totals[0], totals[1], totals[2:].view(2, -1)
    n = targets.sum()
    present = targets > 0
    accuracy = correct[present] / targets[present]  # per class present
    return {
        "test_accuracy": (correct.sum() / n).item(),
        "test_loss": (loss / n).item(),
        "test_entropy": (entropy / n).item(),
        "test_balanced_accuracy": accuracy.mean().item(),
        "test_worst_class_accuracy": accuracy.min().item(),
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
