"""StochGradAdam's fused CPU step: the C++ kernel built on first use against the same
update written in torch and compiled by inductor, with Adam(fused=True) as reference.

The inductor variants draw each entry's keep flag from a ``torch.arange`` counter inside
the compiled function (fused.cpp's stream: its 32-bit arithmetic in int64 masked to 32
bits, or in wrapping int32), so mask and update fuse into one loop; their flags are
checked equal to ``fused.keep_flags`` and their steps close to the C++ kernel's.
Compile time: the first step in a fresh process, with an empty inductor cache (cold)
and again with that cache filled (warm). Step time: interleaved blocks of steps, the
median over repeats of the per-step time and of its ratio to Adam(fused=True)'s.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/fused_backend.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch._dynamo.utils import counters

from sievetrain.files import atomic_write_text
from sievetrain.models import build_model
from sievetrain.optim import StochGradAdam, fused
from sievetrain.train import environment

RATE, LR, BETA1, BETA2, EPS = 0.8, 1e-3, 0.9, 0.999, 1e-8  # StochGradAdam's defaults
M32 = 0xFFFFFFFF
C1, C2 = 0x7FEB352D, 0x846CA68B - 2**32  # mix32's; C2 < 0 so that int64 x * C2 cannot overflow


def low32(x: torch.Tensor) -> torch.Tensor:
    """The low 32 bits: int64 masks them; int32 wraps by itself (two's complement)."""
    return x & M32 if x.dtype == torch.int64 else x


def srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of a 32-bit pattern (int32's >> would copy the sign bit)."""
    return (x >> s) & ((1 << (32 - s)) - 1)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """fused.cpp's mix32 on 32-bit patterns held in int64 or int32."""
    x = low32((x ^ srl(x, 16)) * C1)
    x = low32((x ^ srl(x, 15)) * C2)
    return x ^ srl(x, 16)


def keep(n: int, klo: torch.Tensor, khi: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Keep flags of entries 0..n-1 of the tensor keyed by (klo, khi), as fused.cpp's;
    the counter has klo's dtype."""
    i = torch.arange(n, dtype=klo.dtype)
    words = ((i >> 4) << 3) | (i & 7)  # 8 * (i // 16) + i % 8, in bit operations: vectorises
    bits = mix32(low32(mix32(low32(words + klo)) ^ khi))
    return torch.where((i >> 3) & 1 == 1, srl(bits, 16), bits & 0xFFFF) < threshold


def update(p, g, m, v, klo, khi, threshold, step_size, bc2_inv) -> None:
    """One StochGradAdam step of one tensor, in place (masked_state decay: a masked
    entry is a zero gradient), as fused.cpp's; all four tensors 1-D."""
    masked = torch.where(keep(p.numel(), klo, khi, threshold), g, 0.0)
    m.lerp_(masked, 1 - BETA1)
    v.mul_(BETA2).addcmul_(masked, masked, value=1 - BETA2)
    p.sub_(step_size * m / (v.sqrt() * bc2_inv + EPS))


def key_halves(k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A tensor key's 32-bit halves as 0-d tensors (int32: the same bits, signed)."""
    halves = (k & M32, k >> 32)
    if dtype == torch.int32:
        halves = tuple(h - 2**32 * (h >= 2**31) for h in halves)
    return tuple(torch.tensor(h, dtype=dtype) for h in halves)


# Inductor variants: the hash's integer dtype, and one compiled update each (compiled
# code lives on update's code object, where every new torch.compile wrapper adds entries).
VARIANTS = {
    "inductor, int64 hash": (torch.int64, torch.compile(update)),
    "inductor, int64 hash, dynamic=True": (torch.int64, torch.compile(update, dynamic=True)),
    "inductor, int32 hash": (torch.int32, torch.compile(update)),
}


class InductorStep:
    """An inductor variant as an optimizer: per-tensor moments, one compiled call per
    tensor per step; step keys drawn as StochGradAdam's fused path draws them."""

    def __init__(self, params: list[torch.Tensor], variant: str, seed: int = 0):
        (self.dtype, self.update), self.params, self.t = VARIANTS[variant], params, 0
        # moments in the parameters' layouts; all walked in memory order, as fused.cpp does
        self.m = [flat(torch.zeros_like(p)) for p in params]
        self.v = [flat(torch.zeros_like(p)) for p in params]
        self.generator = torch.Generator().manual_seed(seed)
        self.threshold = torch.tensor(round(RATE * 2**fused.MASK_BITS), dtype=self.dtype)

    @torch.no_grad()
    def step(self, key: int | None = None) -> None:
        self.t += 1
        key = fused.step_keys(self.generator)[0] if key is None else key
        step_size = torch.tensor(LR / (1 - BETA1**self.t))
        bc2_inv = torch.tensor((1 - BETA2**self.t) ** -0.5)
        for j, p in enumerate(self.params):
            klo, khi = key_halves(fused.tensor_key(key, j), self.dtype)
            args = (klo, khi, self.threshold, step_size, bc2_inv)
            self.update(flat(p), flat(p.grad), self.m[j], self.v[j], *args)


def flat(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor's memory as a 1-D view (conv weights may be channels-last)."""
    return t.as_strided((t.numel(),), (1,))


def check_stream(variant: str) -> None:
    """The variant's compiled flags equal fused.keep_flags, and three of its steps of
    fashion-cnn match the C++ kernel's for the same keys."""
    key, n, dtype = 0x0123456789ABCDEF, 100_003, VARIANTS[variant][0]
    threshold = torch.tensor(round(RATE * 2**fused.MASK_BITS), dtype=dtype)
    flags = torch.compile(keep)(n, *key_halves(fused.tensor_key(key, 0), dtype), threshold)
    if not np.array_equal(flags.numpy(), fused.keep_flags(key, 0, n, RATE)):
        raise AssertionError(f"{variant}: keep flags differ from fused.keep_flags")
    ours = InductorStep(parameter_sets()["fashion-cnn"], variant)
    theirs = [p.clone() for p in ours.params]
    m, v = [torch.zeros_like(p) for p in theirs], [torch.zeros_like(p) for p in theirs]
    steps = [torch.zeros(()) for _ in theirs]
    hp = dict(lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS, weight_decay=0.0, maximize=False)
    for t in range(3):
        for p, q in zip(ours.params, theirs, strict=True):
            p.grad = q.grad = torch.randn_like(p) * 1e-3
        ours.step(key + t)
        fused.stochgradadam_fused(
            theirs, [q.grad for q in theirs], m, v, None, steps, library=fused.kernel(),
            key=key + t, sampling_rate=RATE, mask="element", masked_state="decay", scale=1.0, **hp,
        )  # fmt: skip
    torch.testing.assert_close(ours.params, theirs)


def parameter_sets() -> dict[str, list[torch.Tensor]]:
    """fashion-cnn's parameters (11 tensors), 4.2M in 2 tensors, 25M in 100."""
    torch.manual_seed(0)
    model = build_model("fashion-cnn", num_classes=10, input_shape=(1, 28, 28))
    return {
        "fashion-cnn": [p.detach().clone() for p in model.parameters()],
        "2 x 2048x1024": [torch.randn(2048, 1024) * 0.02 for _ in range(2)],
        "100 x 250,000": [torch.randn(250_000) * 0.02 for _ in range(100)],
    }


def with_grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Parameters copied from ``params``, each with a gradient."""
    copy = [torch.nn.Parameter(p.clone()) for p in params]
    for p in copy:
        p.grad = torch.randn_like(p) * 1e-3
    return copy


def first_step(set_name: str, variant: str) -> tuple[float, int]:
    """In this (fresh) process: the first step's seconds and the graphs it compiled."""
    opt = InductorStep(with_grads(parameter_sets()[set_name]), variant)
    start = time.perf_counter()
    opt.step()
    return time.perf_counter() - start, counters["stats"]["unique_graphs"]


def compile_times(set_name: str, variant: str) -> list[tuple[float, int]]:
    """First steps in fresh processes: with an empty inductor cache, then filled."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        command = [sys.executable, __file__, "--first-step", json.dumps([set_name, variant])]
        runs = [subprocess.run(command, env=env, check=True, capture_output=True, text=True)]
        runs += [subprocess.run(command, env=env, check=True, capture_output=True, text=True)]
    return [json.loads(run.stdout) for run in runs]


def time_steps(params: list[torch.Tensor], repeats: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of every variant, one value per repeat, interleaved."""
    make = {
        "Adam fused (reference)": lambda p: torch.optim.Adam(p, fused=True),
        "StochGradAdam fused (C++)": lambda p: StochGradAdam(
            p, sampling_rate=RATE, seed=0, fused=True
        ),
        **{name: lambda p, name=name: InductorStep(p, name) for name in VARIANTS},
    }
    calls = {}
    for name, build in make.items():
        opt = build(with_grads(params))
        opt.step()  # state allocated and code compiled outside the timed blocks
        opt.step()
        calls[name] = opt.step
    graphs = counters["stats"]["unique_graphs"]
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(steps):
                call()
            times[name].append((time.perf_counter() - start) / steps)
    if counters["stats"]["unique_graphs"] != graphs:
        raise AssertionError("a graph was compiled while timing")
    return times


def compile_report() -> list[str]:
    """The C++ kernel's build time; each inductor variant's first step, cold and warm."""
    with tempfile.TemporaryDirectory() as directory:
        times = []
        for _ in range(2):  # cold, then found in its cache
            start = time.perf_counter()
            fused.build("c++", Path(directory))
            times.append(time.perf_counter() - start)
    lines = [
        f"C++ kernel, `fused.build`: cold {times[0]:.2f} s, from its cache "
        f"{1e3 * times[1]:.0f} ms.",
        "",
        "## Inductor: the first step in a fresh process",
        "",
        "| parameters | variant | cold (s) | warm, from cache (s) | graphs compiled |",
        "|---|---|---|---|---|",
    ]
    for set_name in parameter_sets():
        for variant in VARIANTS:
            (cold, graphs), (warm, _) = compile_times(set_name, variant)
            lines.append(f"| {set_name} | {variant} | {cold:.1f} | {warm:.2f} | {graphs} |")
            print(lines[-1], flush=True)
    return lines


def step_report(repeats: int, steps: int) -> list[str]:
    """Per-step time of every variant and its ratio to Adam(fused=True)'s."""
    lines = ["| parameters | variant | step (µs) | ratio to Adam fused |", "|---|---|---|---|"]
    for set_name, params in parameter_sets().items():
        numel = sum(p.numel() for p in params)
        times = time_steps(params, repeats, max(1, round(steps * min(1.0, 1e6 / numel))))
        reference = times["Adam fused (reference)"]
        for name, values in times.items():
            ratio = statistics.median(t / r for t, r in zip(values, reference, strict=True))
            median = 1e6 * statistics.median(values)
            lines.append(f"| {set_name} ({numel:,}) | {name} | {median:,.0f} | {ratio:.2f}× |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per block (fewer if big)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("fused_backend.md")))
    parser.add_argument("--first-step", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # the variants' graphs share one code object; past the limit dynamo would run eager
    torch._dynamo.config.recompile_limit = 32
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    if args.first_step is not None:
        print(json.dumps(first_step(*json.loads(args.first_step))))
        return
    load = lambda: ", ".join(Path("/proc/loadavg").read_text().split()[:3])  # noqa: E731
    command = " ".join(["python benchmarks/fused_backend.py", *sys.argv[1:]])
    lines = [
        "# StochGradAdam's fused step: C++ kernel or inductor",
        "",
        f"Command: `taskset -c 1 env OMP_NUM_THREADS=1 {command}`",
        "",
        f"CPU float32, sampling rate {RATE}, masked_state decay, default hyperparameters, "
        f"1 thread. Load average at start: {load()}. Inductor variants: the hash in int64 "
        "masked to 32 bits, or in int32 (wrapping; logical shifts as shift and mask).",
        "",
    ]
    for variant in VARIANTS:
        check_stream(variant)
    lines += [
        "Same stream: each inductor variant's keep flags (100,003 entries) equal "
        "`fused.keep_flags`, and 3 of its steps of fashion-cnn match the C++ kernel's.",
        "",
        *compile_report(),
        "",
        f"## Step time (load average before: {load()})",
        "",
        *step_report(args.repeats, args.steps),
    ]
    env = environment()
    lines += [
        "",
        f"Median over {args.repeats} interleaved repeats. Load average at end: {load()}. "
        f"Environment: torch {env['torch']}, {env['cpu']}, sievetrain {env['git_sha']}.",
        "",
    ]
    atomic_write_text(Path(args.out), "\n".join(lines))


if __name__ == "__main__":
    main()
