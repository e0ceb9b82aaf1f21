"""Cost of one optimizer step: StochGradAdam against torch.optim.Adam(foreach=True).

Time: the optimizers step in turn on the same parameters and gradients, each
repeat timing a block of steps of every optimizer, so all see the same machine
conditions; the figure is the median over repeats of the per-step time and of
its ratio to Adam's. Memory: each optimizer runs in a fresh process on 256 MB of
parameters (single tensors far above malloc's mmap threshold, so freed memory
goes back to the OS); the process's peak resident memory is reset right before
one step and read right after, and the transient is the peak minus the resident
memory before the step, in units of the parameters' size.

    python benchmarks/optimizer_step.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sievetrain.files import atomic_write_text
from sievetrain.models import build_model
from sievetrain.optim import StochGradAdam, draw_masks
from sievetrain.train import environment

OPTIMIZERS = {
    "Adam, foreach (reference)": lambda p: torch.optim.Adam(p, foreach=True),
    "Adam, per-tensor": lambda p: torch.optim.Adam(p, foreach=False),
    "StochGradAdam 0.8, foreach": lambda p: StochGradAdam(p, sampling_rate=0.8, seed=0),
    "StochGradAdam 0.8, per-tensor": lambda p: StochGradAdam(
        p, sampling_rate=0.8, foreach=False, seed=0
    ),
    "StochGradAdam 0.5, foreach": lambda p: StochGradAdam(p, sampling_rate=0.5, seed=0),
    "StochGradAdam 0.8, foreach, mask=tensor": lambda p: StochGradAdam(p, mask="tensor", seed=0),
    "StochGradAdam 0.8, foreach, masked_state=freeze": lambda p: StochGradAdam(
        p, masked_state="freeze", seed=0
    ),
}
REFERENCE = "Adam, foreach (reference)"
MASK_DRAW = "draw_masks alone (rate 0.8, element)"


def parameter_sets() -> dict[str, list[torch.Tensor]]:
    """Parameters (with gradients) of the reference CNN, the residual CNN and a
    4M-parameter block where memory bandwidth rather than per-op overhead rules."""
    sets = {}
    torch.manual_seed(0)
    for name in ("fashion-cnn", "resnet8"):
        model = build_model(name, num_classes=10, input_shape=(1, 28, 28))
        sets[name] = [p.detach().clone() for p in model.parameters()]
    sets["4M block (2 x 2048x1024)"] = [torch.randn(2048, 1024) * 0.02 for _ in range(2)]
    return sets


def time_steps(params: list[torch.Tensor], repeats: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of every optimizer, and of drawing StochGradAdam's masks
    alone (the part of its step that Adam does not do), one value per repeat."""
    calls = {}
    for name, make in OPTIMIZERS.items():
        copy = [torch.nn.Parameter(p.clone()) for p in params]
        for p in copy:
            p.grad = torch.randn_like(p) * 1e-3
        optimizer = make(copy)
        optimizer.step()  # state allocated outside the timed block
        calls[name] = optimizer.step
    generator = torch.Generator().manual_seed(0)
    calls[MASK_DRAW] = lambda: draw_masks(
        params, 0.8, mask="element", generator_for=lambda device: generator
    )
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(steps):
                call()
            times[name].append((time.perf_counter() - start) / steps)
    return times


def measure_memory(name: str) -> float:
    """In this process: the step's transient peak in units of the parameters' size."""
    params = [torch.nn.Parameter(torch.randn(2**24)) for _ in range(4)]  # 4 x 64 MB
    for p in params:
        p.grad = torch.randn_like(p)
    opt = OPTIMIZERS[name](params)
    opt.step()  # allocates the moments
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    opt.step()
    peak = _status_kib("VmHWM")
    param_kib = sum(p.numel() * p.element_size() for p in params) / 1024
    return (peak - before) / param_kib


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--out", default=str(Path(__file__).with_name("optimizer_step.md")))
    parser.add_argument("--measure-memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory is not None:
        print(json.dumps(measure_memory(args.measure_memory)))
        return

    lines = [
        "# Optimizer step cost: StochGradAdam against Adam",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/optimizer_step.py', *sys.argv[1:]])}`",
        "",
        f"Median over {args.repeats} interleaved repeats of {args.steps} steps each; "
        "ratio = step time / the reference's, computed per repeat, then the median.",
        "",
    ]
    for set_name, params in parameter_sets().items():
        numel = sum(p.numel() for p in params)
        times = time_steps(params, args.repeats, args.steps)
        lines += [
            f"## {set_name}: {numel:,} parameters in {len(params)} tensors",
            "",
            "| optimizer | step time (µs) | ratio to Adam foreach's step |",
            "|---|---|---|",
        ]
        for name, values in times.items():
            ratios = [t / r for t, r in zip(values, times[REFERENCE], strict=True)]
            lines.append(
                f"| {name} | {1e6 * statistics.median(values):,.0f} | "
                f"{statistics.median(ratios):.2f}× |"
            )
        lines.append("")
        print("\n".join(lines[-len(times) - 4 :]), flush=True)

    lines += [
        "## Transient memory of one step",
        "",
        "Peak resident memory during one step minus the resident memory before it, in "
        "units of the parameters' size (4 tensors of 2^24 float32, 256 MB), one fresh "
        "process per optimizer. State (the two moments) is allocated before and not "
        "counted.",
        "",
        "| optimizer | transient (× parameter size) | extra over Adam foreach |",
        "|---|---|---|",
    ]
    memory = {}
    for name in OPTIMIZERS:
        result = subprocess.run(
            [sys.executable, __file__, "--measure-memory", name],
            check=True,
            capture_output=True,
            text=True,
        )
        memory[name] = json.loads(result.stdout)
    for name, value in memory.items():
        lines.append(f"| {name} | {value:.2f} | {value - memory[REFERENCE]:+.2f} |")
    env = environment()
    lines += [
        "",
        f"Environment: torch {env['torch']}, {env['cpu']}, {env['torch_threads']} threads, "
        f"GPU: {env['cuda'] or 'none'}, sievetrain {env['git_sha']}.",
        "",
    ]
    atomic_write_text(Path(args.out), "\n".join(lines))
    print("\n".join(lines[-len(memory) - 5 :]))


if __name__ == "__main__":
    main()
