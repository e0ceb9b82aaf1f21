"""SIFT's per-step scoring cost against its FLOPs share.

For each task's reference model and batch, times (interleaved, median of repeats,
after a warm-up) a SIFT scoring pass on the whole batch (the early-exit forward
without gradients, plus the exit head: a trained linear head also takes its own
small step) and a vanilla training step on the whole batch (forward, backward,
SGD step). FLOPs of both are counted by ``torch.utils.flop_counter.FlopCounterMode``,
which counts matrix multiplies, convolutions and attention (not element-wise
work such as batch norm, activations or pooling). The target is a time share
within 1.2x of the FLOPs share.

    python benchmarks/sift_scoring.py > benchmarks/sift_scoring.md
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from sievetrain.data import load_dataset
from sievetrain.losses import batch_loss
from sievetrain.models import DEFAULT_MODEL, build_model
from sievetrain.selection import SIFT
from sievetrain.train import environment

REPEATS = 15
CASES = (("fashion-mnist", 128, "stem"), ("shakespeare", 64, "layer1"))


def vanilla_step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    batch_loss(model(x), y).backward()
    optimizer.step()


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(dataset: str, batch: int, stage: str) -> dict:
    data = load_dataset(dataset, train_size=batch * 4, test_size=batch)
    torch.manual_seed(0)
    model = build_model(
        DEFAULT_MODEL[dataset], num_classes=data.num_classes, input_shape=data.input_shape
    )
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    selector = SIFT(0.5, stage=stage, num_classes=data.num_classes)
    x, y = (t[:batch] for t in data.train.tensors)
    step = lambda: vanilla_step(model, optimizer, x, y)  # noqa: E731
    score = lambda: selector.select(model, x, y)  # noqa: E731
    for _ in range(3):  # warm-up: allocations, the exit head's lazy build
        step(), score()
    step_flops, score_flops = flops(step), flops(score)
    shares = []
    step_times, score_times = [], []
    for _ in range(REPEATS):
        t_step, t_score = seconds(step), seconds(score)
        step_times.append(t_step)
        score_times.append(t_score)
        shares.append(t_score / t_step)
    time_share = statistics.median(shares)
    flops_share = score_flops / step_flops
    return {
        "task": f"{dataset} / {DEFAULT_MODEL[dataset]} (batch {batch})",
        "exit": f"after `{stage}`, {selector.exit.kind} head",
        "step_ms": 1e3 * statistics.median(step_times),
        "score_ms": 1e3 * statistics.median(score_times),
        "flops_share": flops_share,
        "time_share": time_share,
        "ratio": time_share / flops_share,
    }


def main() -> None:
    rows = [measure(*case) for case in CASES]
    env = environment()
    print("# SIFT scoring cost against its FLOPs share\n")
    print("```bash\npython benchmarks/sift_scoring.py > benchmarks/sift_scoring.md\n```\n")
    print(
        f"torch {env['torch']}, {env['cpu']} ({env['cpu_count']} cores), "
        f"{env['torch_threads']} threads, "
        f"git {env['git_sha']}; median over {REPEATS} interleaved repeats.\n"
    )
    print(
        "| task | exit | vanilla step (ms) | scoring pass (ms) | FLOPs share "
        "| time share | time share / FLOPs share |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['exit']} | {r['step_ms']:.2f} | {r['score_ms']:.2f} "
            f"| {100 * r['flops_share']:.1f} % | {100 * r['time_share']:.1f} % "
            f"| {r['ratio']:.2f} |"
        )


if __name__ == "__main__":
    main()
