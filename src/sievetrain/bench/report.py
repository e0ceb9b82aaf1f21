"""The bench report: a markdown table and a plot of accuracy against training time."""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sievetrain._io import atomic_write_bytes, atomic_write_text
from sievetrain.train import time_to_target

__all__ = ["summarize", "markdown_table", "plot_accuracy_vs_time", "write_report", "baseline_label"]

COLUMNS = (
    "method",
    "seeds",
    "test accuracy (%)",
    "train time (s)",
    "speed-up",
    "Δ acc (pts)",
    "time to target (s)",
    "backpropagated",
    "coverage (%)",
    "sampler share (%)",
)


def baseline_label(records: Sequence[dict[str, Any]]) -> str:
    """The run the others are compared with: ``full`` if present, else the first."""
    labels = _labels(records)
    return "full" if "full" in labels else labels[0]


def summarize(
    records: Sequence[dict[str, Any]], target: float | None = None
) -> tuple[list[dict], float]:
    """One row per method (mean and std over seeds), and the target accuracy used.

    Without ``target``, the target is the baseline's mean final accuracy minus one
    point: "time to within 1 point of full data".
    """
    base = baseline_label(records)
    base_runs = [r for r in records if r["method"] == base]
    base_acc = _mean(r["final_test_accuracy"] for r in base_runs)
    base_time = _mean(r["train_time_s"] for r in base_runs)
    if target is None:
        target = base_acc - 0.01
    rows = []
    for label in _labels(records):
        runs = [r for r in records if r["method"] == label]
        acc = [100 * r["final_test_accuracy"] for r in runs]
        times = [r["train_time_s"] for r in runs]
        to_target = [time_to_target(r["history"], target) for r in runs]
        reached = [t for t in to_target if t is not None]
        rows.append(
            {
                "method": label,
                "seeds": len(runs),
                "accuracy_mean": statistics.fmean(acc),
                "accuracy_std": _std(acc),
                "train_time_mean": statistics.fmean(times),
                "train_time_std": _std(times),
                "speedup": base_time / statistics.fmean(times),
                "accuracy_delta": statistics.fmean(acc) - 100 * base_acc,
                "time_to_target": statistics.fmean(reached) if reached else None,
                "reached_target": len(reached),
                "backpropagated": _mean(r["samples_backpropagated"] for r in runs),
                "coverage": 100 * _mean(r["coverage"] for r in runs),
                "sampler_share": 100
                * _mean(r["time_breakdown_s"]["sampling"] / r["train_time_s"] for r in runs),
            }
        )
    return rows, target


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        ttt = "not reached"
        if r["time_to_target"] is not None:
            ttt = f"{r['time_to_target']:.1f}"
            if r["reached_target"] < r["seeds"]:
                ttt += f" ({r['reached_target']}/{r['seeds']} seeds)"
        cells = [
            r["method"],
            str(r["seeds"]),
            f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}",
            f"{r['train_time_mean']:.1f} ± {r['train_time_std']:.1f}",
            f"{r['speedup']:.2f}×",
            f"{r['accuracy_delta']:+.2f}",
            ttt,
            f"{r['backpropagated']:,.0f}",
            f"{r['coverage']:.1f}",
            f"{r['sampler_share']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_time(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Mean test accuracy (band: ± std over seeds) at each epoch against the mean
    cumulative training time, one line per method; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label in _labels(records):
        runs = [r for r in records if r["method"] == label]
        epochs = min(len(r["history"]) for r in runs)
        t = [_mean(r["history"][e]["train_time_s"] for r in runs) for e in range(epochs)]
        acc = [[100 * r["history"][e]["test_accuracy"] for r in runs] for e in range(epochs)]
        mean = [statistics.fmean(a) for a in acc]
        std = [_std(a) for a in acc]
        (line,) = ax.plot(t, mean, marker="o", markersize=3, label=label)
        ax.fill_between(
            t,
            [max(m - s, 0.0) for m, s in zip(mean, std, strict=True)],  # accuracy stays in [0, 100]
            [min(m + s, 100.0) for m, s in zip(mean, std, strict=True)],
            color=line.get_color(),
            alpha=0.15,
        )
    ax.set_xlabel("training wall-clock time (s, evaluation excluded)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_report(
    out: Path, records: Sequence[dict[str, Any]], *, command: str, target: float | None = None
) -> str:
    """Write ``report.md`` and ``accuracy_vs_time.png`` into ``out``; returns the table."""
    rows, target = summarize(records, target)
    table = markdown_table(rows)
    first = records[0]
    env = first["environment"]
    train = first["config"]["train"]
    title = f"{first['dataset']} · {first['model']} · {first['epochs']} epochs"
    plot_accuracy_vs_time(records, out / "accuracy_vs_time.png", title)
    text = "\n".join(
        [
            f"# sievetrain bench: {title}",
            "",
            f"Command: `{command}`",
            "",
            table,
            f"Baseline for speed-up and Δ acc: `{baseline_label(records)}`. "
            f"Time to target: training seconds until test accuracy ≥ {100 * target:.2f}%. "
            "Train time excludes evaluation; the sampler share is the time spent choosing "
            "indices and counting coverage, as a share of train time.",
            "",
            f"Data: {first['train_size']} train / {first['test_size']} test samples; batch "
            f"{train['batch_size']}; schedule {train['schedule']} "
            f"({train['schedule_unit']}-indexed).",
            "",
            f"Environment: sievetrain {env['sievetrain']} ({env['git_sha']}), "
            f"torch {env['torch']}, "
            f"Python {env['python']}, {env['cpu']} ({env['torch_threads']} threads), "
            f"GPU: {env['cuda'] or 'none'}.",
            "",
            "![test accuracy against training time](accuracy_vs_time.png)",
            "",
        ]
    )
    atomic_write_text(out / "report.md", text)
    return table


def _labels(records: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in records))


def _mean(values) -> float:
    return statistics.fmean(list(values))


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0
