"""Run under torchrun (two gloo ranks): StochGradAdam(seed=None) built before the
process group exists, as a script builds it before ``init_process_group`` (or a
Hugging Face one before ``TrainingArguments``), then DDP training, on the fused and
the unfused path. Writes ``rankN.json`` into OUT for each rank: for each path, the
seed, whether the replicas are bitwise equal, and whether the optimizer left its
seed unresolved until its first step.

Usage: torchrun --nproc_per_node=2 seed_before_group_run.py OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sievetrain import distributed
from sievetrain.optim import StochGradAdam


def build(fused: bool) -> tuple[nn.Module, StochGradAdam]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same initial weights on every rank
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, StochGradAdam(model.parameters(), lr=1e-2, sampling_rate=0.5, fused=fused)


def train(rank: int, model: nn.Module, optimizer: StochGradAdam) -> dict:
    unresolved = optimizer.seed is None and optimizer.state_dict()["seed"] is None
    ddp = nn.parallel.DistributedDataParallel(model)
    generator = torch.Generator().manual_seed(100 + rank)  # different data per rank
    for _ in range(5):
        x, y = torch.randn(8, 6, generator=generator), torch.randint(3, (8,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        optimizer.step()
    return {"seed": optimizer.seed, "in_sync": distributed.in_sync(ddp), "unresolved": unresolved}


def main() -> None:
    rank = int(os.environ["RANK"])
    torch.manual_seed(1000 + rank)  # each process its own global seed, as any script
    runs = {"fused": build(True), "unfused": build(False)}
    dist.init_process_group("gloo")  # after the optimizers
    results = {path: train(rank, *run) for path, run in runs.items()}
    Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
