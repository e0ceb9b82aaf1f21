"""Summarize a SIFT benchmark run (one folder per task) in the shape the issue asks:
time to a target accuracy, final accuracy, backward passes, forward passes and the
exit/true-loss rank correlation, from the bench's results.jsonl.

The target is the accuracy the baseline (the first method listed, vanilla training)
reaches at 80 % of its epoch budget in every seed: the lowest, over seeds, of its
best accuracy by that epoch. A run's time to the target
is interpolated linearly in training time between the two evaluations (one per
epoch) that bracket it, so that methods are not rounded to whole epochs.

    python benchmarks/sift_summary.py benchmarks/sift/fashion-mnist benchmarks/sift/shakespeare
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from sievetrain.files import read_jsonl


def target_accuracy(runs: list[dict], fraction: float = 0.8) -> tuple[float, int]:
    """The accuracy every run of ``runs`` has reached by epoch round(fraction * epochs):
    the lowest, over seeds, of the best accuracy by that epoch."""
    epoch = max(1, round(fraction * runs[0]["epochs"]))
    reached = [max(h["test_accuracy"] for h in r["history"][:epoch]) for r in runs]
    return min(reached), epoch


def time_to(history: list[dict], target: float) -> float | None:
    """Training seconds at which test accuracy first reaches ``target``, interpolated."""
    prev_t, prev_a = 0.0, None
    for h in history:
        t, a = h["train_time_s"], h["test_accuracy"]
        if a >= target:
            if prev_a is None or a == prev_a:
                return t
            return prev_t + (t - prev_t) * (target - prev_a) / (a - prev_a)
        prev_t, prev_a = t, a
    return None


def _mean_std(values: list[float], fmt: str) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{fmt}} ± {std:{fmt}}"


def table(records: list[dict]) -> str:
    labels = list(dict.fromkeys(r["method"] for r in records))
    base = [r for r in records if r["method"] == labels[0]]
    target, epoch = target_accuracy(base)
    base_ttt = statistics.fmean(time_to(r["history"], target) for r in base)
    lines = [
        f"Target: {100 * target:.2f} % (reached by {labels[0]} in every seed by epoch "
        f"{epoch} of {base[0]['epochs']}).\n",
        "| method | time to target (s) | speed-up to target | final accuracy (%) "
        "| train time (s) | backprop samples | forwarded partially | forwarded fully "
        "| scoring share of train time (%) | exit/true Spearman (first → last epoch) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        runs = [r for r in records if r["method"] == label]
        ttt = [time_to(r["history"], target) for r in runs]
        reached = [t for t in ttt if t is not None]
        ttt_text = "not reached"
        speed = "—"
        if reached:
            ttt_text = _mean_std(reached, ".1f")
            if len(reached) < len(runs):
                ttt_text += f" ({len(reached)}/{len(runs)} seeds)"
            speed = f"{base_ttt / statistics.fmean(reached):.2f}×"
        share = [100 * r["time_breakdown_s"]["selection"] / r["train_time_s"] for r in runs]
        rho = [
            (r["history"][0].get("exit_spearman"), r["history"][-1].get("exit_spearman"))
            for r in runs
        ]
        rho_text = "—"
        if rho[0][0] is not None:
            first, last = (statistics.fmean(pair[i] for pair in rho) for i in (0, 1))
            rho_text = f"{first:.2f} → {last:.2f}"
        lines.append(
            f"| {label} | {ttt_text} | {speed} "
            f"| {_mean_std([100 * r['final_test_accuracy'] for r in runs], '.2f')} "
            f"| {_mean_std([r['train_time_s'] for r in runs], '.1f')} "
            f"| {statistics.fmean(r['samples_backpropagated'] for r in runs):,.0f} "
            f"| {statistics.fmean(r['samples_forwarded_partially'] for r in runs):,.0f} "
            f"| {statistics.fmean(r['samples_forwarded_fully'] for r in runs):,.0f} "
            f"| {statistics.fmean(share):.1f} | {rho_text} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    for folder in map(Path, sys.argv[1:]):
        records = read_jsonl(folder / "results.jsonl")
        r = records[0]
        print(f"### {r['dataset']}, {r['model']} ({len(records)} runs)\n")
        print(table(records))


if __name__ == "__main__":
    main()
