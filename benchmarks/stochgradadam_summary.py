"""Summarize the StochGradAdam benchmark: one table per architecture, from the
bench runs' results.jsonl (accuracy, entropy, time, and the optimizer step's
share of training time, which the per-run report does not show).

    python benchmarks/stochgradadam_summary.py benchmarks/fashion_mnist_stochgradadam/resnet8 \
        benchmarks/fashion_mnist_stochgradadam/vgg8
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from sievetrain.bench.report import summarize
from sievetrain.files import read_jsonl


def table(records: list[dict]) -> str:
    rows, _ = summarize(records)
    lines = [
        "| method | final test accuracy (%) | Δ vs adam (pts) | last-3-epoch accuracy (%) "
        "| final entropy | epochs to entropy ≤ 0.2 | train time (s) "
        "| optimizer step share of train time (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        runs = [r for r in records if r["method"] == row["method"]]
        share = statistics.fmean(
            100 * r["time_breakdown_s"]["step"] / r["train_time_s"] for r in runs
        )
        # Mean of each seed's last three epochs: steadier than the last epoch alone
        # under a constant learning rate.
        late = [statistics.fmean(100 * h["test_accuracy"] for h in r["history"][-3:]) for r in runs]
        late_std = statistics.stdev(late) if len(late) > 1 else 0.0
        lines.append(
            f"| {row['method']} | {row['accuracy_mean']:.2f} ± {row['accuracy_std']:.2f} "
            f"| {row['accuracy_delta']:+.2f} | {statistics.fmean(late):.2f} ± {late_std:.2f} "
            f"| {row['entropy']:.3f} | {_epochs_to(runs, 0.2)} "
            f"| {row['train_time_mean']:.1f} ± {row['train_time_std']:.1f} | {share:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _epochs_to(runs: list[dict], level: float) -> str:
    """Mean first epoch whose test entropy is at most ``level`` (seeds that reach it)."""
    hits = [
        next((h["epoch"] for h in r["history"] if h["test_entropy"] <= level), None) for r in runs
    ]
    reached = [e for e in hits if e is not None]
    if not reached:
        return "not reached"
    text = f"{statistics.fmean(reached):.1f}"
    return text if len(reached) == len(runs) else f"{text} ({len(reached)}/{len(runs)} seeds)"


def main() -> None:
    for folder in map(Path, sys.argv[1:]):
        records = read_jsonl(folder / "results.jsonl")
        print(f"### {records[0]['model']} ({len(records)} runs)\n")
        print(table(records))


if __name__ == "__main__":
    main()
