"""The bench report's plots: test accuracy against training time, and prediction
entropy against epochs, one line per method (mean, band ± std over seeds)."""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sievetrain.bench.compare import method_labels, sample_std
from sievetrain.files import atomic_write_bytes

__all__ = ["plot_accuracy_vs_time", "plot_entropy_vs_epoch"]


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


def _plot_curves(records, path: Path, *, x, y, bounds, labels) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
