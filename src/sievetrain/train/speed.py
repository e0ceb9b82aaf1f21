"""The training step's speed options: mixed precision and ``torch.compile``.

- ``amp="bf16"`` or ``"fp16"``: the training step's forward pass runs under
  ``torch.autocast`` on the config's device type; the loss is computed in float32
  from the logits cast up. fp16 also scales the loss (``torch.amp.GradScaler``), whose
  state travels in the trainer's checkpoint. Selectors' scoring passes, samplers'
  refresh and evaluation run in the model's own precision: they are not the step, a
  selector's trained exit head takes its dtype from the features it first sees, and
  evaluation measures every run alike.
- ``compile=True``: the training step calls ``torch.compile(model)``, a compiled view
  sharing the model's parameters and buffers. The model itself is left eager and
  unchanged (its submodules and names, its ``state_dict`` keys), so a selector's hooks
  on a named stage, a sampler's refresh and evaluation work as without compile (and
  are not compiled). ``model.compile()`` would not do: it compiles nothing when the
  model's ``forward`` is torch's own (``nn.Sequential``, as the reference models are).
  The warm-up compiles with the batch dimension dynamic, so that later batch sizes (a
  short last batch, a selector's kept samples) reuse that graph rather than recompile
  on the training clock; a size outside the graph's guards (e.g. inductor's CPU
  convolutions want 16 to 4096 samples) still recompiles, charged to its phase.
  Compiling is thus kept off ``train_time_s``, as the warm-up's other one-time costs
  are, and reported as the run's ``warmup_time_s``.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

__all__ = [
    "AMP_DTYPES",
    "autocast",
    "check_amp",
    "compiled",
    "mark_batch_dynamic",
    "scaled_step",
]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str, device: torch.device) -> None:
    """ValueError naming ``amp`` and ``device`` unless autocast to that dtype works there.

    torch only warns, and runs in full precision, where a device type lacks the
    dtype: a run recorded as mixed precision must be one, so the warning is an error.
    """
    if amp == "off":
        return
    # torch < 2.4 has no such check; there, building the autocast below raises instead
    available = getattr(torch.amp, "is_autocast_available", lambda _: True)
    if not available(device.type):
        raise ValueError(f"invalid amp={amp!r}: autocast is not available on device={device!s}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            torch.autocast(device.type, dtype=AMP_DTYPES[amp])
        except (UserWarning, RuntimeError) as error:
            raise ValueError(f"invalid amp={amp!r} on device={device!s}: {error}") from None


def autocast(amp: str, device: torch.device) -> AbstractContextManager:
    """The context a training forward pass runs in: autocast to ``amp``'s dtype, or
    nothing at all for ``"off"``."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``: a callable view of ``model`` (same parameters and
    buffers) whose calls run compiled; ``model`` itself stays eager."""
    return torch.compile(model)


def mark_batch_dynamic(*tensors: Tensor) -> None:
    """Let the compiler treat dimension 0 of ``tensors`` as dynamic where the model
    allows it (a hint: a model that needs a fixed batch size keeps one)."""
    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, 0)


def scaled_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """``optimizer.step()`` through ``scaler`` (plainly when it is disabled); True when
    the scaler skipped the step because a gradient was inf or NaN (the scale then
    halves). A skipped step changes no parameter and no optimizer state."""
    if not scaler.is_enabled():
        optimizer.step()
        return False
    scale = scaler.get_scale()
    scaler.step(optimizer)  # unscales the gradients first
    scaler.update()
    return scaler.get_scale() < scale
