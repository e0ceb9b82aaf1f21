"""Trainer throughput against a minimal hand-written PyTorch loop.

Same model, batch size, data and optimizer; the two loops alternate, each
repeat measures one epoch of each, so both see the same machine conditions.
Writes a markdown report (default benchmarks/throughput.md).

    python benchmarks/throughput.py --dataset fashion-mnist --repeats 3
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sievetrain.data import load_dataset
from sievetrain.files import atomic_write_text
from sievetrain.models import DEFAULT_MODEL, build_model
from sievetrain.optim import build_optimizer
from sievetrain.sampling import SoftRandomSampler
from sievetrain.train import TrainConfig, Trainer, environment


def hand_written_epoch(model, optimizer, x, y, batch_size, generator) -> float:
    """The loop a person writes by hand: shuffle, slice, forward, backward, step."""
    start = time.perf_counter()
    model.train()
    order = torch.randperm(len(y), generator=generator)
    for i in range(0, len(y), batch_size):
        idx = order[i : i + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def trainer_epoch(trainer: Trainer, epoch: int) -> float:
    start = time.perf_counter()
    trainer.train_epoch(epoch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).with_name("throughput.md")))
    args = parser.parse_args()

    data = load_dataset(args.dataset, train_size=args.train_size, test_size=256)
    x, y = data.train.tensors
    name = DEFAULT_MODEL[data.name]

    def fresh_model():
        torch.manual_seed(0)
        return build_model(name, num_classes=data.num_classes, input_shape=data.input_shape)

    hand_model = fresh_model()
    hand_opt = build_optimizer("sgd", hand_model.parameters())
    model = fresh_model()
    config = TrainConfig(epochs=args.repeats + 1, batch_size=args.batch_size, schedule="constant")
    trainer = Trainer(
        model,
        build_optimizer("sgd", model.parameters()),
        data.train,
        data.test,
        config=config,
        sampler=SoftRandomSampler(len(y), 1.0, seed=0),
    )
    generator = torch.Generator().manual_seed(0)
    # Warm-up epoch of each, not timed.
    hand_written_epoch(hand_model, hand_opt, x, y, args.batch_size, generator)
    trainer_epoch(trainer, 0)
    hand, ours = [], []
    for r in range(args.repeats):
        hand.append(hand_written_epoch(hand_model, hand_opt, x, y, args.batch_size, generator))
        ours.append(trainer_epoch(trainer, r + 1))
        print(
            f"repeat {r + 1}: hand-written {hand[-1]:.2f} s, trainer {ours[-1]:.2f} s",
            file=sys.stderr,
        )
    # Trainer throughput / hand-written throughput, per repeat.
    ratio = [h / o for h, o in zip(hand, ours, strict=True)]
    breakdown = trainer.acct.time_s
    env = environment()
    lines = [
        "# Trainer throughput against a hand-written loop",
        "",
        f"Command: `{shlex.join(['python', *sys.argv])}`",
        "",
        f"{data.name}, {len(y)} training samples, model `{name}`, batch {args.batch_size}, SGD; "
        f"{args.repeats} alternating repeats of one epoch each, "
        "after one untimed warm-up epoch each.",
        "",
        "| loop | epoch time (s), mean ± std | samples/s |",
        "|---|---|---|",
        f"| hand-written | {statistics.fmean(hand):.2f} ± {statistics.stdev(hand):.2f} | "
        f"{len(y) / statistics.fmean(hand):,.0f} |",
        f"| sievetrain Trainer | {statistics.fmean(ours):.2f} ± {statistics.stdev(ours):.2f} | "
        f"{len(y) / statistics.fmean(ours):,.0f} |",
        "",
        f"**Trainer throughput / hand-written throughput: {statistics.fmean(ratio):.3f}** "
        f"(per repeat: {', '.join(f'{r:.3f}' for r in ratio)}; target ≥ 0.9).",
        "",
        "Trainer time by phase over the timed and warm-up epochs (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in breakdown.items()),
        "",
        f"Environment: torch {env['torch']}, {env['cpu']}, {env['torch_threads']} threads, "
        f"GPU: {env['cuda'] or 'none'}, sievetrain {env['git_sha']}.",
        "",
    ]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
