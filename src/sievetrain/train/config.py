"""The training configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from sievetrain.options import Options, option
from sievetrain.train.speed import check_amp

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig(Options):
    """What the trainer needs besides the model, data, sampler, selector and optimizer."""

    epochs: int = option(10, "passes over the epoch-level sampler's (sub)set")
    batch_size: int = option(128, "samples per optimizer step, before batch-level selection")
    eval_batch_size: int = option(1024, "samples per forward pass in evaluation")
    schedule: Literal["constant", "step", "cosine"] = option("step", "lr multiplier's shape")
    schedule_unit: Literal["epoch", "step"] = option(
        "epoch",
        "epoch: lr set at each epoch start from epoch/epochs (paper); "
        "step: every optimizer step from step/total_steps (not in the paper)",
    )
    milestones: tuple[float, ...] = option(
        (0.5, 0.75), "step schedule: fractions of the run where lr *= gamma"
    )
    gamma: float = option(0.1, "step schedule: lr multiplier at each milestone, in (0, 1]")
    target_accuracy: float | None = option(None, "fraction in (0, 1]; time to reach it is reported")
    device: str = option("cpu", "torch device string: cpu, cuda, cuda:N or mps, where available")
    amp: Literal["off", "bf16", "fp16"] = option(
        "off",
        "mixed precision of the training step's forward: autocast dtype (fp16 scales the loss)",
    )
    compile: bool = option(
        False, "torch.compile the training step (compiled in the untimed warm-up)"
    )

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"invalid {name}={value!r}: must be a positive integer")
        super().__post_init__()
        if any(not 0 < m <= 1 for m in self.milestones):
            raise ValueError(f"invalid milestones={self.milestones!r}: each must be in (0, 1]")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"invalid gamma={self.gamma!r}: must be in (0, 1]")
        t = self.target_accuracy
        if t is not None and (math.isnan(t) or not 0 < t <= 1):
            raise ValueError(f"invalid target_accuracy={t!r}: must be a fraction in (0, 1]")
        _check_device(self.device)
        check_amp(self.amp, torch.device(self.device))


def _check_device(text: str) -> None:
    """ValueError naming ``text`` unless it is a torch device this process can use."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(
            f"invalid device={text!r}: not a torch device (cpu, cuda, cuda:N, mps)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch has no CUDA build"
                if torch.version.cuda is None
                else "no GPU is visible"
            )
            raise ValueError(f"invalid device={text!r}: CUDA is not available ({why})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"invalid device={text!r}: only {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"invalid device={text!r}: MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"invalid device={text!r}: sievetrain trains on cpu, cuda or mps")
