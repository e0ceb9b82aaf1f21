"""Data-parallel training on this machine: 1 process x 2 threads against 2 processes x 1
thread, at the same global batch.

Two parts:

``allreduce``, run under torchrun, times the fashion-cnn's training step (global batch
128, 64 per rank) with DDP's gradient all-reduce and without it (``no_sync``), the two
interleaved, and prints the all-reduce's share of a step::

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 \
        benchmarks/distributed.py allreduce

``summary ONE TWO`` reads two bench folders of the same bench, one run as a single
process and one under torchrun, and prints per method the training time per epoch,
the ratio of the two, and the final test accuracy (mean ± std over seeds)::

    python benchmarks/distributed.py summary FOLDER_1PROC FOLDER_2PROC
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPEATS, STEPS = 7, 20  # interleaved repeats of STEPS steps each, per variant


def allreduce() -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    from sievetrain.data import load_dataset
    from sievetrain.losses import batch_loss
    from sievetrain.models import build_model

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_dataset("fashion-mnist", train_size=2048, test_size=16)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(
        build_model("fashion-cnn", num_classes=10, input_shape=data.input_shape)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = data.train.tensors
    local = 128 // world

    def steps(sync: bool) -> float:
        start = time.perf_counter()
        for i in range(STEPS):
            at = slice((i * world + rank) * local, (i * world + rank + 1) * local)
            context = model.no_sync() if not sync else torch.enable_grad()
            with context:
                loss = batch_loss(model(x[at]), y[at])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
        dist.barrier()
        return (time.perf_counter() - start) / STEPS

    steps(True)  # warm-up: DDP's bucket rebuild and allocations
    timed = {True: [], False: []}
    for _ in range(REPEATS):
        for sync in (True, False):
            timed[sync].append(steps(sync))
    if rank == 0:
        with_sync, without = statistics.median(timed[True]), statistics.median(timed[False])
        print(f"ranks: {world}, threads per rank: {torch.get_num_threads()}, global batch 128")
        print(f"step with all-reduce (median of {REPEATS} x {STEPS}): {1000 * with_sync:.1f} ms")
        print(f"step without (no_sync):                        {1000 * without:.1f} ms")
        print(f"all-reduce share of a step: {100 * (1 - without / with_sync):.1f} %")
    dist.destroy_process_group()


def _by_method(folder: Path) -> dict[str, list[dict]]:
    from sievetrain.files import read_jsonl

    runs: dict[str, list[dict]] = {}
    for record in read_jsonl(folder / "results.jsonl"):
        runs.setdefault(record["method"], []).append(record)
    return runs


def _spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary(one: Path, two: Path) -> None:
    single, double = _by_method(one), _by_method(two)
    print(
        "| method | seeds | s/epoch, 1 proc x 2 threads | s/epoch, 2 procs x 1 thread | "
        "ratio 2p/1p | accuracy 1 proc (%) | accuracy 2 procs (%) |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, runs in single.items():
        other = double.get(method, [])
        per_epoch = [r["train_time_s"] / r["epochs"] for r in runs]
        per_epoch_2 = [r["train_time_s"] / r["epochs"] for r in other]
        ratio = statistics.fmean(per_epoch_2) / statistics.fmean(per_epoch) if other else None
        print(
            f"| {method} | {len(runs)} | {_spread(per_epoch)} | "
            f"{_spread(per_epoch_2) if other else '-'} | "
            f"{f'{ratio:.3f}' if ratio is not None else '-'} | "
            f"{_spread([r['final_test_accuracy'] for r in runs], 100)} | "
            f"{_spread([r['final_test_accuracy'] for r in other], 100) if other else '-'} |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["allreduce"]:
        allreduce()
    elif sys.argv[1:2] == ["summary"] and len(sys.argv) == 4:
        summary(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
