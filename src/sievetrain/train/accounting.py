"""Where every second and every sample of a run went."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["PHASES", "Accounting"]

# Training-clock phases. Evaluation is timed apart and never counted as training.
PHASES = ("sampling", "data", "selection", "forward", "backward", "step")


@dataclass
class Accounting:
    """Phase timers (seconds) and sample/step counters of one run."""

    time_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    train_time_s: float = 0.0  # wall time of the training loops (includes the phases)
    eval_time_s: float = 0.0
    samples_forwarded: int = 0  # samples in full forward passes with gradients
    samples_backpropagated: int = 0
    optimizer_steps: int = 0
    sync_device: torch.device | None = None  # CUDA device to synchronise before reading a clock

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to phase ``name``."""
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.time_s[name] += time.perf_counter() - start

    def _sync(self) -> None:
        # Kernels run asynchronously on a GPU: without a sync the time of one phase
        # would be charged to whichever phase next waits on the device.
        if self.sync_device is not None:
            torch.cuda.synchronize(self.sync_device)

    def state_dict(self) -> dict:
        state = asdict(self)
        state.pop("sync_device")
        return state

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, dict(value) if isinstance(value, dict) else value)
