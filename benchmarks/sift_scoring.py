"""Each batch-level selector's step cost against its bound (e + 3ρ)/3.

A selector's step is its ``select`` call (the scoring pass and the choice, plus the
indexing of the kept samples, all charged to the trainer's ``selection`` phase),
then a training step on the kept samples (forward, backward, SGD step). If a
training step costs three forward passes and a scoring pass costs e of them, the
step can at best cost (e + 3ρ)/3 of a vanilla step, ρ the kept fraction: that is
the bound. Here e is measured: the ``select`` time over the time of a forward pass
of the whole batch as the trainer runs it (training mode, gradients on, loss
included). For SIFT, ``e at exit`` is the part of e spent in the model itself (its
forward up to the exit, without gradients): the exit head and the choice cost the
rest. The forward share of a vanilla step, which the bound takes as 1/3, is
measured too.

All variants run interleaved on one model and a cycle of distinct batches, their
order rotated every repeat, after a warm-up; each ratio is the median over the
repeats of the per-repeat ratio. FLOPs (``torch.utils.flop_counter``: matrix
multiplies, convolutions, attention; not element-wise work) are counted once.
Minor page faults (``getrusage``) per step are reported because freshly mapped
memory, not arithmetic, is much of what a CNN's first layer costs on CPU.

Selective Backprop runs with β = 1 and no floor (its expected keep fraction is
then 1/2), from its first epoch; in one process it keeps a random number of
samples, so its ρ is the mean kept, and as in the trainer its kept samples are
gathered into full-batch steps: each kept sample is charged 1/b of the mean
full step. Greedy SGD is a pure function on logistic regression
(:mod:`sievetrain.selection.greedy`), not a selector, so it has no row.

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sift_scoring.py \\
        > benchmarks/sift_scoring.md
"""

from __future__ import annotations

import functools
import os
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from sievetrain.data import load_dataset
from sievetrain.losses import batch_loss
from sievetrain.models import DEFAULT_MODEL, build_model
from sievetrain.selection import SIFT, RandomKeep, SelectiveBackprop, scoring_mode
from sievetrain.train import environment

REPEATS = 21
WARMUP = 3  # repeats not timed: allocations, the exit head's lazy build, SB's history
BATCHES = 4  # distinct batches cycled through
RATIO = 0.5  # ρ
CASES = (("fashion-mnist", 128), ("shakespeare", 64))
COMMAND = (
    "taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sift_scoring.py "
    "> benchmarks/sift_scoring.md"
)


def make_selectors(num_classes: int) -> dict:
    return {
        "sift (loss)": SIFT(RATIO, num_classes=num_classes),
        "sift (entropy)": SIFT(RATIO, num_classes=num_classes, score="entropy"),
        "random-keep": RandomKeep(RATIO),
        "selective-backprop β=1": SelectiveBackprop(1.0, min_prob=0.0, full_epochs=0),
    }


def timed(fn, *args):
    """``(seconds, minor page faults, fn's result)``."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - start
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, out


def flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


class Case:
    """One task's model, optimizer, batches and selectors, with their timed steps."""

    def __init__(self, dataset: str, batch: int) -> None:
        data = load_dataset(dataset, train_size=batch * BATCHES, test_size=batch)
        torch.manual_seed(0)
        self.name = f"{dataset} / {DEFAULT_MODEL[dataset]} (batch {batch})"
        self.model = build_model(
            DEFAULT_MODEL[dataset], num_classes=data.num_classes, input_shape=data.input_shape
        ).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        x, y = data.train.tensors
        self.batches = [
            (x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]) for i in range(BATCHES)
        ]
        self.selectors = make_selectors(data.num_classes)

    def step(self, x, y) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        batch_loss(self.model(x), y).backward()
        self.optimizer.step()

    def forward(self, x, y) -> None:
        batch_loss(self.model(x), y)  # as the trainer's forward phase: graph built, loss

    def select(self, selector, x, y):
        keep = selector.select(self.model, x, y)
        return (x, y) if keep is None else (x[keep], y[keep])

    def exit_forward(self, selector, x) -> None:
        with scoring_mode(self.model):
            selector.exit.features(self.model, x)

    def vanilla(self, x, y) -> dict:
        return {"step": timed(self.step, x, y)[:2], "forward": timed(self.forward, x, y)[:2]}

    def selector_step(self, selector, x, y) -> dict:
        """``select``, then a step on the kept samples; a selector that ``accumulates``
        gets, as in the trainer, a full-batch step whenever b kept samples are pending."""
        seconds, faults, (xk, yk) = timed(self.select, selector, x, y)
        parts = {"select": (seconds, faults), "kept": len(yk), "step": (0.0, 0), "stepped": 0}
        if not selector.accumulates:
            parts["step"], parts["stepped"] = timed(self.step, xk, yk)[:2], len(yk)
        else:
            self.accumulate(parts, xk, yk, len(y))
        if isinstance(selector, SIFT):  # after the step: the trainer steps right after select
            parts["exit"] = timed(self.exit_forward, selector, x)[:2]
        return parts

    def accumulate(self, parts: dict, xk, yk, batch: int) -> None:
        """Queue the kept samples; train a full batch of them once there are enough."""
        self.pending.append((xk, yk))
        if sum(len(p[1]) for p in self.pending) >= batch:
            xs, ys = (torch.cat(t) for t in zip(*self.pending, strict=True))
            self.pending = [(xs[batch:], ys[batch:])]
            parts["step"] = timed(self.step, xs[:batch], ys[:batch])[:2]
            parts["stepped"] = batch

    def measure(self) -> dict:
        """Every variant's parts per timed repeat, and select FLOPs over step FLOPs."""
        variants = {"vanilla": self.vanilla} | {
            name: functools.partial(self.selector_step, s) for name, s in self.selectors.items()
        }
        names = list(variants)
        runs = {name: [] for name in names}
        self.pending = []
        for r in range(WARMUP + REPEATS):
            x, y = self.batches[r % BATCHES]
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated order
                parts = variants[name](x, y)
                if r >= WARMUP:
                    runs[name].append(parts)
        x, y = self.batches[0]
        step_flops = flops(self.step, x, y)
        return {
            "batch": len(y),
            "accumulates": {n: s.accumulates for n, s in self.selectors.items()},
            "vanilla": runs.pop("vanilla"),
            "runs": runs,
            "flops": {
                n: flops(self.select, s, x, y) / step_flops for n, s in self.selectors.items()
            },
        }


def summarise(result: dict) -> tuple[dict, list[dict]]:
    """Medians over the repeats: the vanilla step's, and one row per selector."""
    med, vanilla, batch = statistics.median, result["vanilla"], result["batch"]
    head = {
        "step_ms": 1e3 * med(v["step"][0] for v in vanilla),
        "forward_ms": 1e3 * med(v["forward"][0] for v in vanilla),
        "forward_share": med(v["forward"][0] / v["step"][0] for v in vanilla),
        "step_faults": med(v["step"][1] for v in vanilla),
    }
    rows = []
    for name, runs in result["runs"].items():
        pairs = list(zip(vanilla, runs, strict=True))
        if result["accumulates"][name]:  # a kept sample costs 1/b of a full step
            full = statistics.mean(r["step"][0] for r in runs if r["stepped"])
            steps = [full * r["kept"] / batch for r in runs]
        else:
            steps = [r["step"][0] for r in runs]
        e = [r["select"][0] / v["forward"][0] for v, r in pairs]
        bound = [(e_r + 3 * r["kept"] / batch) / 3 for e_r, r in zip(e, runs, strict=True)]
        ratio = [
            (r["select"][0] + t) / v["step"][0] for (v, r), t in zip(pairs, steps, strict=True)
        ]
        rows.append(
            {
                "selector": name,
                "rho": statistics.mean(r["kept"] / batch for r in runs),
                "select_ms": 1e3 * med(r["select"][0] for r in runs),
                "e": med(e),
                "e_exit": med(r["exit"][0] / v["forward"][0] for v, r in pairs)
                if "exit" in runs[0]
                else None,
                "kept_share": med(t / v["step"][0] for v, t in zip(vanilla, steps, strict=True)),
                "bound": med(bound),
                "ratio": med(ratio),
                "over_bound": med(m / b for m, b in zip(ratio, bound, strict=True)),
                "time_share": med(r["select"][0] / v["step"][0] for v, r in pairs),
                "flops_share": result["flops"][name],
                "faults": med(r["select"][1] + r["step"][1] for r in runs),
            }
        )
    return head, rows


def report(case: str, head: dict, rows: list[dict]) -> None:
    print(
        f"## {case}\n\nvanilla step {head['step_ms']:.2f} ms "
        f"({head['step_faults']:.0f} page faults), forward {head['forward_ms']:.2f} ms: "
        f"forward share of a step **{head['forward_share']:.3f}** (the bound assumes 1/3).\n"
    )
    print(
        "| selector | ρ | select (ms) | e | e at exit | kept step / vanilla | bound "
        "| measured | measured / bound | select time / step time | select FLOPs / step FLOPs "
        "| page faults |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e_exit = "—" if r["e_exit"] is None else f"{r['e_exit']:.3f}"
        print(
            f"| {r['selector']} | {r['rho']:.3f} | {r['select_ms']:.2f} | {r['e']:.3f} "
            f"| {e_exit} | {r['kept_share']:.3f} | {r['bound']:.3f} | {r['ratio']:.3f} "
            f"| **{r['over_bound']:.3f}** | {100 * r['time_share']:.1f} % "
            f"| {100 * r['flops_share']:.1f} % | {r['faults']:.0f} |"
        )
    print()


def main() -> None:
    env = environment()  # first: the git sha is taken before the runs
    start = os.getloadavg()
    cases = [Case(*case) for case in CASES]
    results = [(case.name, case.measure()) for case in cases]
    end = os.getloadavg()
    print("# Selector step cost against its bound (e + 3ρ)/3\n")
    print(f"```bash\n{COMMAND}\n```\n")
    print(
        f"torch {env['torch']}, {env['cpu']} ({env['cpu_count']} cores), "
        f"{env['torch_threads']} thread(s), git {env['git_sha']}; load average (1, 5, 15 min) "
        f"{start[0]:.2f} / {start[1]:.2f} / {start[2]:.2f} at the start, "
        f"{end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f} at the end; median over {REPEATS} "
        f"interleaved repeats after {WARMUP} warm-up repeats, ρ = {RATIO}.\n"
    )
    print(
        "e: the selector's `select` time over a forward pass of the whole batch. Bound: "
        "(e + 3ρ)/3 of a vanilla step. Measured: (`select` + kept-subset step) / vanilla "
        "step. Page faults: minor faults in `select` plus the kept step.\n"
    )
    for name, result in results:
        report(name, *summarise(result))


if __name__ == "__main__":
    main()
