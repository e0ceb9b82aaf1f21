"""The bench report's plots: test accuracy against training time, and prediction
entropy against epochs, one line per method (mean, band ± std over seeds); with
``--frontier``, test accuracy against CPU time, full data's sweep against the methods."""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sievetrain.bench.compare import method_labels, sample_std
from sievetrain.files import atomic_write_bytes

__all__ = ["plot_accuracy_vs_cpu", "plot_accuracy_vs_time", "plot_entropy_vs_epoch"]


def plot_accuracy_vs_time(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Mean test accuracy (band: ± std over seeds) at each epoch against the mean
    cumulative training time, one line per method; written atomically as PNG."""
    _plot_curves(
        records,
        path,
        x=lambda h: h["train_time_s"],
        y=lambda h: 100 * h["test_accuracy"],
        bounds=(0.0, 100.0),
        labels=("training wall-clock time (s, evaluation excluded)", "test accuracy (%)", title),
    )


def plot_entropy_vs_epoch(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Mean normalized prediction entropy on the test set (band: ± std over seeds)
    at each epoch, one line per method; written atomically as PNG."""
    _plot_curves(
        records,
        path,
        x=lambda h: h["epoch"],
        y=lambda h: h["test_entropy"],
        bounds=(0.0, 1.0),
        labels=("epoch", "normalized prediction entropy (0 = confident, 1 = uniform)", title),
    )


def plot_accuracy_vs_cpu(
    sweeps: Sequence[dict[str, Any]], methods: Sequence[dict[str, Any]], path: Path, title: str = ""
) -> None:
    """Test accuracy against training CPU time: each full-data sweep of
    ``frontier_summary`` as a line through its budgets (mean over seeds, each point
    labelled with its F), each method as a point with error bars (± std over seeds on
    both axes); written atomically as PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for sweep in sweeps:
        if None in sweep["cpu_time_mean"]:
            continue  # records without CPU time: nothing to place
        xs, ys = sweep["cpu_time_mean"], sweep["accuracy_mean"]
        (line,) = ax.plot(xs, ys, marker="o", label=f"{sweep['baseline']} at budget F")
        for f, x, y in zip(sweep["fractions"], xs, ys, strict=True):
            ax.annotate(
                f"F={f:g}",
                (x, y),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=8,
                color=line.get_color(),
            )
    for row in methods:
        if row["cpu_time_mean"] is None:
            continue
        ax.errorbar(
            row["cpu_time_mean"],
            row["accuracy_mean"],
            xerr=row["cpu_time_std"],
            yerr=row["accuracy_std"],
            fmt="s",
            capsize=3,
            label=row["method"],
        )
    ax.margins(0.08)  # room for the F labels
    ax.set_xlabel("training CPU time (s, evaluation excluded)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(plt, fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _plot_curves(records, path: Path, *, x, y, bounds, labels) -> None:
    plt = _pyplot()
    lo, hi = bounds
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label in method_labels(records):
        runs = [r for r in records if r["method"] == label]
        epochs = min(len(r["history"]) for r in runs)
        xs = [statistics.fmean(x(r["history"][e]) for r in runs) for e in range(epochs)]
        ys = [[y(r["history"][e]) for r in runs] for e in range(epochs)]
        mean = [statistics.fmean(v) for v in ys]
        std = [sample_std(v) for v in ys]
        (line,) = ax.plot(xs, mean, marker="o", markersize=3, label=label)
        ax.fill_between(
            xs,
            [max(m - s, lo) for m, s in zip(mean, std, strict=True)],  # the band stays in bounds
            [min(m + s, hi) for m, s in zip(mean, std, strict=True)],
            color=line.get_color(),
            alpha=0.15,
        )
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(labels[2])
    ax.grid(alpha=0.3)
    ax.legend()
    _save(plt, fig, path)
