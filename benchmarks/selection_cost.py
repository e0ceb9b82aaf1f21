"""How the cost of choosing an epoch's subset grows with the dataset: GRAD-MATCH
against Soft Random Sampling on Fashion-MNIST, with the fitted growth t = a * n^b.

    python benchmarks/selection_cost.py > benchmarks/selection_cost.md

Writes ``benchmarks/selection_cost.png``. Each figure is the median of a few
repeats, measured side by side in one process on an untrained reference CNN (the
selection's cost does not depend on the weights); one training epoch over the same
samples is timed alongside for scale.
"""

from __future__ import annotations

import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from sievetrain.data import load_dataset
from sievetrain.models import build_model
from sievetrain.sampling import (
    GradMatchSampler,
    SoftRandomSampler,
    batch_gradients,
    batch_partition,
    gradmatch_select,
)
from sievetrain.train import environment

SIZES = (7500, 15000, 30000, 60000)  # training samples
BATCH = 128  # samples per candidate batch (and per training step)
RATIOS = (0.1, 0.3)
REPEATS = 3  # GRAD-MATCH selections per size (each is a pass over the data)
SRS_REPEATS = 50


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_epoch_time(model, data: TensorDataset) -> float:
    """One SGD epoch of plain training over ``data`` (seconds), the unit of comparison."""
    x, y = data.tensors
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    start = time.perf_counter()
    for idx in torch.randperm(len(y)).split(BATCH):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return time.perf_counter() - start


def fit_power_law(ns, ts) -> tuple[float, float]:
    """Least squares on log t = log a + b log n; returns (a, b)."""
    xs = [torch.tensor(float(n)).log() for n in ns]
    ys = [torch.tensor(t).log() for t in ts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    covariance = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    b = covariance / sum((x - mx) ** 2 for x in xs)
    return float((my - b * mx).exp()), float(b)


def gradmatch_selection(n: int, ratio: float, model, data) -> None:
    """One whole selection, as the trainer runs it at the start of a round."""
    sampler = GradMatchSampler(n, ratio, batch_size=BATCH, epochs=20, kappa=0.0)
    sampler.refresh(model, data)


def srs_selection(n: int, ratio: float) -> None:
    """SRS_REPEATS epochs' index draws (divided out below)."""
    sampler = SoftRandomSampler(n, ratio)
    for epoch in range(SRS_REPEATS):
        sampler.set_epoch(epoch)
        sampler.epoch_indices()


def measure() -> list[dict]:
    full = load_dataset("fashion-mnist", train_size=max(SIZES), test_size=10).train
    rows = []
    for n in SIZES:
        data = TensorDataset(*(t[:n] for t in full.tensors))
        torch.manual_seed(0)
        model = build_model("fashion-cnn", num_classes=10, input_shape=(1, 28, 28))
        row = {"n": n, "epoch": train_epoch_time(model, data)}
        torch.manual_seed(0)
        model = build_model("fashion-cnn", num_classes=10, input_shape=(1, 28, 28))
        batches = list(batch_partition(n, BATCH, seed=0)[: n // BATCH])
        row["gradients"] = median_time(partial(batch_gradients, model, data, batches), REPEATS)
        columns = batch_gradients(model, data, batches)
        for r in RATIOS:
            budget = round(r * len(batches))
            row[f"omp {r}"] = median_time(partial(gradmatch_select, columns, budget), REPEATS)
            row[f"gradmatch {r}"] = median_time(
                partial(gradmatch_selection, n, r, model, data), REPEATS
            )
            row[f"srs {r}"] = median_time(partial(srs_selection, n, r), 3) / SRS_REPEATS
        rows.append(row)
        print(f"n={n}: {row}", file=sys.stderr)
    return rows


def plot(rows, fits, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for key, style in (
        ("gradmatch 0.1", "o-"),
        ("gradmatch 0.3", "s-"),
        ("epoch", "^--"),
        ("srs 0.1", "v-"),
        ("srs 0.3", "d-"),
    ):
        a, b = fits[key]
        label = "one training epoch" if key == "epoch" else f"{key} selection"
        (line,) = ax.plot(ns, [r[key] for r in rows], style, label=f"{label}: n^{b:.2f}")
        ax.plot(ns, [a * n**b for n in ns], ":", color=line.get_color(), alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training samples n")
    ax.set_ylabel("seconds per selection (median)")
    ax.set_title("Fashion-MNIST · fashion-cnn · batch 128: selection cost against n")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    rows = measure()
    keys = [k for k in rows[0] if k != "n"]
    fits = {k: fit_power_law([r["n"] for r in rows], [r[k] for r in rows]) for k in keys}
    plot(rows, fits, Path(__file__).with_suffix(".png"))
    env = environment()
    print("# Selection cost against dataset size\n")
    print("Command: `python benchmarks/selection_cost.py > benchmarks/selection_cost.md`\n")
    print(
        f"Environment: torch {env['torch']}, {env['cpu']} ({env['torch_threads']} threads), "
        f"GPU: {env['cuda'] or 'none'}, git {env['git_sha']}.\n"
    )
    print("Seconds (median of repeats). `gradients` is the forward pass that gives every")
    print("candidate batch's last-layer gradient; `omp r` is OMP with the random fill;")
    print("`gradmatch r` is a whole selection as the trainer runs it (both, and the")
    print("bookkeeping); `srs r` is drawing one epoch's indices; `epoch` is one training")
    print("epoch (forward, backward, SGD step) over the same n samples.\n")
    print("| n | " + " | ".join(keys) + " | gradmatch 0.1 / epoch |")
    print("|---|" + "---|" * (len(keys) + 1))
    for r in rows:
        cells = [f"{r[k]:.4f}" if r[k] < 0.1 else f"{r[k]:.2f}" for k in keys]
        share = r["gradmatch 0.1"] / r["epoch"]
        print(f"| {r['n']:,} | " + " | ".join(cells) + f" | {share:.2f} |")
    print("\nFitted growth t = a · n^b (least squares in log–log):\n")
    print("| cost | a | b |")
    print("|---|---|---|")
    for k in keys:
        a, b = fits[k]
        print(f"| {k} | {a:.3g} | {b:.2f} |")
    print("\n![selection cost against dataset size](selection_cost.png)")


if __name__ == "__main__":
    main()
