"""The bench report: a markdown table and a plot of accuracy against training time."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sievetrain.bench.audit import (
    audit_rows,
    audit_section,
    imbalance_section,
    reference_rows,
    reference_section,
    regimes_line,
)
from sievetrain.bench.compare import (
    disturbed_notes,
    matched_rows,
    matched_section,
    method_labels,
    sample_std,
    timing_cells,
    timing_summary,
)
from sievetrain.bench.frontier_report import frontier_section, frontier_summary
from sievetrain.bench.plots import (
    plot_accuracy_vs_cpu,
    plot_accuracy_vs_time,
    plot_entropy_vs_epoch,
)
from sievetrain.files import atomic_write_text
from sievetrain.train import time_to_target

__all__ = [
    "REPORT_FILES",
    "summarize",
    "markdown_table",
    "epoch_table",
    "plot_accuracy_vs_time",
    "plot_entropy_vs_epoch",
    "write_report",
    "baseline_label",
]

# What write_report writes into a bench's folder.
REPORT_FILES = (
    "report.md",
    "accuracy_vs_time.png",
    "entropy_vs_epoch.png",
    "accuracy_vs_cpu.png",  # with --frontier
    "summary.json",
)
COLUMNS = (
    "method",
    "seeds",
    "test accuracy (%)",
    "train time (s)",
    "CPU time (s)",
    "speed-up",
    "CPU speed-up",
    "Δ acc (pts)",
    "entropy",
    "time to target (s)",
    "backpropagated",
    "coverage (%)",
    "sampler share (%)",
)
# Shown when a run selects within batches: forward passes that stop at an early
# exit, whole forward passes (with or without gradients), and how well the
# selector's scores rank the true losses on held-out batches.
SELECTION_COLUMNS = ("forwarded partially", "forwarded fully", "exit/true Spearman")
# Shown when a sampler chooses its subset from the model (a coreset): how many
# selections a run made, and the mean seconds of one (counted in train time too).
SUBSET_COLUMNS = ("subset selections", "seconds per selection")


def baseline_label(records: Sequence[dict[str, Any]]) -> str:
    """The run the others are compared with: ``full`` if present, else the first."""
    labels = method_labels(records)
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
    for label in method_labels(records):
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
                "accuracy_std": sample_std(acc),
                "train_time_mean": statistics.fmean(times),
                "train_time_std": sample_std(times),
                "speedup": base_time / statistics.fmean(times),
                "accuracy_delta": statistics.fmean(acc) - 100 * base_acc,
                "entropy": _mean_or_none(r.get("final_test_entropy") for r in runs),
                "time_to_target": statistics.fmean(reached) if reached else None,
                "reached_target": len(reached),
                "backpropagated": _mean(r["samples_backpropagated"] for r in runs),
                "forwarded_partially": _mean(r.get("samples_forwarded_partially", 0) for r in runs),
                "forwarded_fully": _mean(
                    r.get("samples_forwarded_fully", r["samples_forwarded"]) for r in runs
                ),
                "spearman": _mean_or_none(r.get("final_exit_spearman") for r in runs),
                "selects": any(r["config"]["methods"].get("selector") for r in runs),
                "subset_selections": _mean(r.get("sampler", {}).get("selections", 0) for r in runs),
                "seconds_per_selection": _seconds_per_selection(runs),
                "coverage": 100 * _mean(r["coverage"] for r in runs),
                "sampler_share": 100
                * _mean(r["time_breakdown_s"]["sampling"] / r["train_time_s"] for r in runs),
                **timing_summary(runs, base_runs),
            }
        )
    return rows, target


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary rows as a markdown table, then a line for each method whose
    timing is disturbed (its speed-up cells, and those compared with it, say so)."""
    selects = any(r["selects"] for r in rows)
    subsets = any(r["subset_selections"] for r in rows)
    columns = COLUMNS + SELECTION_COLUMNS * selects + SUBSET_COLUMNS * subsets
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
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
            *timing_cells(r),  # CPU time, speed-up, CPU speed-up
            f"{r['accuracy_delta']:+.2f}",
            "—" if r["entropy"] is None else f"{r['entropy']:.3f}",
            ttt,
            f"{r['backpropagated']:,.0f}",
            f"{r['coverage']:.1f}",
            f"{r['sampler_share']:.3f}",
        ]
        if selects:
            cells += [
                f"{r['forwarded_partially']:,.0f}",
                f"{r['forwarded_fully']:,.0f}",
                "—" if r["spearman"] is None else f"{r['spearman']:.3f}",
            ]
        if subsets:
            per = r["seconds_per_selection"]
            cells += [f"{r['subset_selections']:g}", "—" if per is None else f"{per:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + disturbed_notes(rows)) + "\n"


def epoch_table(
    records: Sequence[dict[str, Any]], key: str, scale: float = 1.0, digits: int = 3
) -> str:
    """Markdown table of ``history[key] * scale`` at each epoch (rows), mean ± std
    over seeds for each method (columns)."""
    labels = method_labels(records)
    lines = ["| epoch | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    epochs = min(len(r["history"]) for r in records)
    for e in range(epochs):
        cells = []
        for label in labels:
            values = [scale * r["history"][e][key] for r in records if r["method"] == label]
            cells.append(f"{statistics.fmean(values):.{digits}f} ± {sample_std(values):.{digits}f}")
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, records: Sequence[dict[str, Any]], *, command: str, target: float | None = None
) -> str:
    """Write ``report.md``, ``accuracy_vs_time.png``, ``summary.json`` and (when the
    runs recorded it) ``entropy_vs_epoch.png`` into ``out``, and with a full-data sweep
    (``--frontier``) ``accuracy_vs_cpu.png``; returns the summary table, led by the
    speed-up at equal accuracy (``--frontier``) and the comparison at equal compute
    (``--matched``) when the bench ran them."""
    rows, target = summarize(records, target)
    matched = matched_rows(records)
    sweeps, equal = frontier_summary(records)  # with --frontier
    lead = frontier_section(sweeps, equal, heading=not matched) + matched_section(matched)
    regimes = imbalance_section(records) + audit_section(records)  # empty for clean data
    regimes += reference_section(records)  # empty without a reference model
    table = lead + markdown_table(rows) + ("\n" + regimes if regimes else "")
    first = records[0]
    env = first["environment"]
    train = first["config"]["train"]
    world_size = first.get("world_size", 1)  # records from before torchrun support lack it
    ranks = f" in all, over {world_size} ranks (torchrun)" if world_size > 1 else ""
    epochs = first["epochs"]
    title = f"{first['dataset']} · {first['model']} · {epochs} epoch{'s' * (epochs != 1)}"
    report, accuracy_plot, entropy_plot, cpu_plot, summary = REPORT_FILES
    plot_accuracy_vs_time(records, out / accuracy_plot, title)
    if sweeps:
        plot_accuracy_vs_cpu(sweeps, equal, out / cpu_plot, title)
    per_epoch = ["## Test accuracy (%) by epoch", "", epoch_table(records, "test_accuracy", 100, 2)]
    if all("test_entropy" in h for r in records for h in r["history"]):
        plot_entropy_vs_epoch(records, out / entropy_plot, title)
        per_epoch += [
            "## Normalized prediction entropy by epoch",
            "",
            "Mean over the test set of −Σ p log p / log C (0 = confident, 1 = uniform).",
            "",
            epoch_table(records, "test_entropy"),
            f"![normalized prediction entropy against epochs]({entropy_plot})",
            "",
        ]
    text = "\n".join(
        [
            f"# sievetrain bench: {title}",
            "",
            f"Command: `{command}`",
            "",
            table,
            f"Baseline for speed-up and Δ acc: `{baseline_label(records)}`. "
            f"Time to target: training seconds until test accuracy ≥ {100 * target:.2f}%. "
            "Train time excludes evaluation; CPU time is the process's CPU seconds over the "
            "same span (about threads × wall time on an idle machine); the sampler share is "
            "the time spent choosing indices and counting coverage, as a share of train time; "
            "entropy is the final "
            "normalized prediction entropy on the test set (0 = confident, 1 = uniform).",
            "",
            f"Data: {first['train_size']} train / {first['test_size']} test samples; batch "
            f"{train['batch_size']}{ranks}; schedule {train['schedule']} "
            f"({train['schedule_unit']}-indexed).",
            "",
            *([line, ""] if (line := regimes_line(records)) else []),
            f"Environment: sievetrain {env['sievetrain']} ({env['git_sha']}), "
            f"torch {env['torch']}, "
            f"Python {env['python']}, {env['cpu']} ({env['torch_threads']} threads"
            f"{' per rank' if ranks else ''}), GPU: {env['cuda'] or 'none'}.",
            "",
            f"![test accuracy against training time]({accuracy_plot})",
            "",
            *([f"![test accuracy against training CPU time]({cpu_plot})", ""] if sweeps else []),
            *per_epoch,
        ]
    )
    atomic_write_text(out / report, text)
    summary_json = {"baseline": baseline_label(records), "target_accuracy": target}
    summary_json |= {"methods": rows, "matched": matched, "selection_audit": audit_rows(records)}
    summary_json |= {"reference": reference_rows(records)}
    summary_json |= {"equal_accuracy": equal, "full_data_sweeps": sweeps} if sweeps else {}
    atomic_write_text(out / summary, json.dumps(summary_json, indent=2) + "\n")
    return table


def _seconds_per_selection(runs: Sequence[dict[str, Any]]) -> float | None:
    """Mean seconds of one subset selection over the runs' selections (None: none)."""
    seconds = [s["seconds"] for r in runs for s in r.get("sampler", {}).get("per_selection", [])]
    return statistics.fmean(seconds) if seconds else None


def _mean_or_none(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else statistics.fmean(values)


def _mean(values) -> float:
    return statistics.fmean(list(values))
