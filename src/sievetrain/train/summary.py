"""The run summary: a run's final figures, as the trainer returns them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["RunSummary", "time_to_target"]


@dataclass(frozen=True)
class RunSummary:
    """Final figures of one run; ``to_dict()`` gives the JSON-ready record fields."""

    final_test_accuracy: float | None  # fraction of predicted targets
    final_test_loss: float | None  # mean cross-entropy
    final_test_entropy: float | None  # mean normalized prediction entropy (0..1)
    balanced_test_accuracy: float | None  # mean over classes of each class's accuracy
    worst_class_test_accuracy: float | None  # the lowest class accuracy
    train_time_s: float  # wall time of the training loops, evaluation excluded
    train_cpu_s: float  # process CPU time of the same span
    eval_time_s: float
    warmup_time_s: float  # untimed warm-up before training (with compile: the compilation)
    time_breakdown_s: dict[str, float]  # wall seconds per training phase
    cpu_breakdown_s: dict[str, float]  # process CPU seconds per training phase
    device_breakdown_s: dict[str, float]  # CUDA-event seconds per device phase (GPU only)
    samples_forwarded: int  # samples in forward passes with gradients
    samples_forwarded_partially: int  # scoring passes that stopped at an early exit
    samples_forwarded_fully: int  # whole forward passes, with or without gradients
    samples_backpropagated: int  # a reference model's training (RHO-LOSS) included
    samples_scored: int  # a reference model's forward passes without gradients
    optimizer_steps: int
    skipped_steps: int  # of optimizer_steps, skipped by fp16 loss scaling (inf/NaN gradients)
    world_size: int  # ranks of the process group the run trained on (1: one process)
    coverage: float  # fraction of the training set seen at least once
    time_to_target_s: float | None  # training seconds until target accuracy, if reached
    final_exit_spearman: float | None  # selector score vs true loss rank correlation
    selector: dict[str, Any]  # the selector's stats()
    sampler: dict[str, Any]  # the sampler's stats()
    selection_audit: dict[str, Any]  # backpropagated samples per flag and class (see audit.py)
    history: list[dict[str, Any]]  # one record per epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def time_to_target(history: list[dict[str, Any]], target: float | None) -> float | None:
    """Training seconds until test accuracy first reached ``target`` (None if never)."""
    if target is None:
        return None
    for record in history:
        if record["test_accuracy"] >= target:
            return record["train_time_s"]
    return None
