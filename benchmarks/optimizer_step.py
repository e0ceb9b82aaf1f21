"""Cost of one optimizer step: StochGradAdam, fused and unfused, against
torch.optim.Adam's fused and foreach steps.

Time: the optimizers step in turn on the same parameters and gradients, each
repeat timing a block of steps of every optimizer, so all see the same machine
conditions; the figure is the median over repeats of the per-step time and of its
ratio to Adam(fused=True)'s, at 1 and at 2 threads (torch.set_num_threads).
Memory: each optimizer runs in a fresh process on 256 MB of parameters (single
tensors far above malloc's mmap threshold, so freed memory goes back to the OS);
the process's peak resident memory is reset right before one step and read right
after, and the transient is the peak minus the resident memory before the step,
in units of the parameters' size.

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
from sievetrain.optim import StochGradAdam, fused
from sievetrain.train import environment

REFERENCE = "Adam, fused (reference)"
OPTIMIZERS = {
    REFERENCE: lambda p: torch.optim.Adam(p, fused=True),
    "Adam, foreach": lambda p: torch.optim.Adam(p, foreach=True),
    "StochGradAdam 0.8, fused": lambda p: StochGradAdam(p, sampling_rate=0.8, seed=0, fused=True),
    "StochGradAdam 0.8, unfused (foreach)": lambda p: StochGradAdam(
        p, sampling_rate=0.8, seed=0, fused=False
    ),
    "StochGradAdam 0.5, fused": lambda p: StochGradAdam(p, sampling_rate=0.5, seed=0, fused=True),
    "StochGradAdam 0.8, fused, mask=tensor": lambda p: StochGradAdam(
        p, mask="tensor", seed=0, fused=True
    ),
    "StochGradAdam 0.8, fused, masked_state=freeze": lambda p: StochGradAdam(
        p, masked_state="freeze", seed=0, fused=True
    ),
}
THREADS = (1, 2)


def parameter_sets() -> dict[str, list[torch.Tensor]]:
    """The reference CNN's parameters (many small tensors: per-call overhead rules),
    a 4.2M-parameter block in 2 tensors and 25M in 100 (memory bandwidth rules)."""
    torch.manual_seed(0)
    model = build_model("fashion-cnn", num_classes=10, input_shape=(1, 28, 28))
    return {
        "fashion-cnn": [p.detach().clone() for p in model.parameters()],
        "4.2M block (2 x 2048x1024)": [torch.randn(2048, 1024) * 0.02 for _ in range(2)],
        "25M in 100 tensors (100 x 250,000)": [torch.randn(250_000) * 0.02 for _ in range(100)],
    }


def time_steps(params: list[torch.Tensor], repeats: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of every optimizer, one value per repeat."""
    calls = {}
    for name, make in OPTIMIZERS.items():
        copy = [torch.nn.Parameter(p.clone()) for p in params]
        for p in copy:
            p.grad = torch.randn_like(p) * 1e-3
        optimizer = make(copy)
        optimizer.step()  # state allocated outside the timed block
        calls[name] = optimizer.step
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

    fused.kernel()  # built (or found in the cache) before anything is timed
    uptime = Path("/proc/loadavg").read_text().split()[:3]
    lines = [
        "# Optimizer step cost: StochGradAdam against Adam",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/optimizer_step.py', *sys.argv[1:]])}`",
        "",
        f"Median over {args.repeats} interleaved repeats of blocks of {args.steps} steps "
        "(fewer for the large sets); ratio = step time / Adam(fused=True)'s, computed per "
        f"repeat, then the median. Load average before the run: {', '.join(uptime)}.",
        "",
    ]
    for set_name, params in parameter_sets().items():
        numel = sum(p.numel() for p in params)
        by_threads = {}
        for threads in THREADS:
            torch.set_num_threads(threads)
            steps = max(1, round(args.steps * min(1.0, 4e6 / numel)))  # big sets: fewer
            by_threads[threads] = time_steps(params, args.repeats, steps)
        lines += [
            f"## {set_name}: {numel:,} parameters in {len(params)} tensors",
            "",
            "| optimizer | "
            + " | ".join(f"{t} thread{'s' * (t > 1)}: µs, ratio to Adam fused" for t in THREADS)
            + " |",
            "|---|" + "---|" * len(THREADS),
        ]
        for name in OPTIMIZERS:
            cells = []
            for times in by_threads.values():
                ratios = [t / r for t, r in zip(times[name], times[REFERENCE], strict=True)]
                cells.append(
                    f"{1e6 * statistics.median(times[name]):,.0f} µs, "
                    f"{statistics.median(ratios):.2f}×"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        print("\n".join(lines[-len(OPTIMIZERS) - 4 :]), flush=True)

    lines += [
        "## Transient memory of one step",
        "",
        "Peak resident memory during one step minus the resident memory before it, in "
        "units of the parameters' size (4 tensors of 2^24 float32, 256 MB), one fresh "
        "process per optimizer. State (the two moments) is allocated before and not "
        "counted.",
        "",
        "| optimizer | transient (× parameter size) | extra over Adam fused |",
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
        f"Environment: torch {env['torch']}, {env['cpu']}, {env['cpu_count']} CPUs, "
        f"GPU: {env['cuda'] or 'none'}, sievetrain {env['git_sha']}.",
        "",
    ]
    atomic_write_text(Path(args.out), "\n".join(lines))
    print("\n".join(lines[-len(memory) - 5 :]))


if __name__ == "__main__":
    main()
