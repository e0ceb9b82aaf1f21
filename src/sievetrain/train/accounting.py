"""Where every second and every sample of a run went.

Each phase is timed three ways: wall-clock time (what a user waits for), the
process's CPU time (what the process itself spent, which a busy machine does not
inflate the way it inflates wall time), and on a GPU the device time between CUDA
events around the phase. Wall time far above the usual wall/CPU ratio means the
machine was shared: the report flags such timings rather than trust them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["DEVICE_PHASES", "PHASES", "Accounting"]

# Training-clock phases. Evaluation is timed apart and never counted as training.
# ``reference``: a selector's reference model (RHO-LOSS), trained and scored before
# the run's first epoch.
PHASES = ("reference", "sampling", "data", "selection", "forward", "backward", "step")
# Phases whose work runs on the device: timed with CUDA events on a GPU.
DEVICE_PHASES = ("reference", "selection", "forward", "backward", "step")


def _phases() -> dict[str, float]:
    return dict.fromkeys(PHASES, 0.0)


@dataclass
class Accounting:
    """Phase timers (seconds) and sample/step counters of one run."""

    time_s: dict[str, float] = field(default_factory=_phases)  # wall time per phase
    cpu_s: dict[str, float] = field(default_factory=_phases)  # process CPU time per phase
    device_s: dict[str, float] = field(default_factory=dict)  # CUDA-event time (GPU only)
    train_time_s: float = 0.0  # wall time of the training loops (includes the phases)
    train_cpu_s: float = 0.0  # process CPU time of the same span
    eval_time_s: float = 0.0
    warmup_time_s: float = 0.0  # untimed warm-up before training (with compile: compilation)
    samples_forwarded: int = 0  # samples in full forward passes with gradients
    samples_backpropagated: int = 0
    optimizer_steps: int = 0
    skipped_steps: int = 0  # of optimizer_steps, skipped by fp16 loss scaling (inf/NaN grads)
    sync_device: torch.device | None = None  # CUDA device to synchronise before reading a clock

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall, CPU (and on a GPU, device) time of the ``with`` block to ``name``."""
        events = self._events() if name in DEVICE_PHASES else None
        self._sync()
        wall, cpu = time.perf_counter(), time.process_time()
        if events is not None:
            events[0].record()
        try:
            yield
        finally:
            if events is not None:
                events[1].record()
            self._sync()
            self.time_s[name] += time.perf_counter() - wall
            self.cpu_s[name] += time.process_time() - cpu
            if events is not None:  # synchronised above: both events have completed
                seconds = events[0].elapsed_time(events[1]) / 1000
                self.device_s[name] = self.device_s.get(name, 0.0) + seconds

    @contextmanager
    def training(self) -> Iterator[None]:
        """Add the wall and CPU time of the ``with`` block to the training totals."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.train_time_s += time.perf_counter() - wall
            self.train_cpu_s += time.process_time() - cpu

    def _events(self) -> tuple[torch.cuda.Event, torch.cuda.Event] | None:
        if self.sync_device is None:
            return None
        with torch.cuda.device(self.sync_device):
            return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

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
