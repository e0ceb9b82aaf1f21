"""The report's section "Speed-up at equal accuracy", over seeds, from the records a
``--frontier`` bench wrote (see :mod:`sievetrain.bench.frontier`)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from sievetrain.bench.compare import method_labels, sample_std
from sievetrain.bench.frontier import equal_fraction

__all__ = ["FRONTIER_COLUMNS", "FRONTIER_NOTE", "frontier_section", "frontier_summary"]

FRONTIER_COLUMNS = (
    "method",
    "accuracy (%)",
    "F*",
    "backward cost",
    "speed-up, backward passes",
    "CPU cost",
    "speed-up, CPU time",
    "Δ acc vs full at equal CPU time (pts)",
)
FRONTIER_NOTE = (
    "F* is the fraction of its optimizer steps full data needs to reach the method's "
    "test accuracy (full/budget=F: the schedule compressed to end fully decayed): "
    "linear interpolation on the full-data sweep over F (mean accuracy over seeds, made "
    "non-decreasing in F), never extrapolated. Backward cost is the method's backward "
    "passes as a fraction of full data's; CPU cost its training CPU time over full "
    "data's at F = 1 (scoring forwards and all else the method does included). The "
    "speed-ups at equal accuracy are F* over the backward cost, and the sweep's CPU time "
    "at F* (interpolated) over the method's: each seed against its own sweep, mean ± "
    "sample std over seeds, shown when every seed's accuracy lies on the sweep. Both "
    "are against full data: F = 1 is always in the sweep. The last column compares "
    "at equal time: the method's accuracy minus the sweep's at the method's CPU time "
    "(interpolated between the sweep's runs by their CPU times), paired by seed."
)


def frontier_summary(
    records: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The full-data sweeps (one per optimizer) and one row per method that carries
    ``equal_accuracy``; both empty for a bench without ``--frontier``.

    A sweep: ``baseline`` (its F = 1 run's label), ``fractions`` (ascending),
    ``labels``, ``seeds``, and per F ``accuracy_mean``/``accuracy_std`` (%) and
    ``cpu_time_mean``/``cpu_time_std`` (s; None where not recorded). A row: the
    method's ``accuracy_mean``/``accuracy_std`` (%) and CPU time (s), ``f_star`` and
    ``status`` from the mean sweep and mean accuracy, the mean ``backward_cost`` and
    ``cpu_cost``, and, over the ``seeds_within`` seeds, ``speedup_backward_mean``,
    ``speedup_cpu_mean`` and their ``_std`` (None unless every seed is within).
    """
    sweeps: dict[str, dict[str, Any]] = {}
    points = [r for r in records if "sweep_fraction" in r]
    for key in dict.fromkeys(_optimizer(r) for r in points):
        sweeps[key] = _sweep([r for r in points if _optimizer(r) == key])
    rows = []
    for label in method_labels(records):
        runs = [r for r in records if r["method"] == label and "equal_accuracy" in r]
        if runs and _optimizer(runs[0]) in sweeps:
            rows.append(_row(label, runs, sweeps[_optimizer(runs[0])]))
    return list(sweeps.values()), rows


def frontier_section(
    sweeps: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], *, heading: bool
) -> str:
    """Heading, explanation and table of ``frontier_summary``, then (with ``heading``)
    the heading of the summary table that follows; empty without a sweep."""
    if not sweeps:
        return ""
    lines = ["| " + " | ".join(FRONTIER_COLUMNS) + " |", "|" + "---|" * len(FRONTIER_COLUMNS)]
    for r in rows:
        n, within = r["seeds"], r["seeds_within"]
        cells = [
            r["method"],
            f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}",
            _f_star(r),
            f"{r['backward_cost']:.3g}",
            _speedup(r["speedup_backward_mean"], r["speedup_backward_std"], within, n),
            "—" if r["cpu_cost"] is None else f"{r['cpu_cost']:.3g}",
            _speedup(r["speedup_cpu_mean"], r["speedup_cpu_std"], within, n),
            _change(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not rows:
        lines = ["No method to compare: every run of this bench is a point of the sweep."]
    curves = "; ".join(
        f"`{s['baseline']}` at F = " + ", ".join(f"{f:g}" for f in s["fractions"]) for s in sweeps
    )
    text = "\n".join(
        ["## Speed-up at equal accuracy", "", FRONTIER_NOTE, "", f"Sweep: {curves}.", "", *lines]
    )
    return text + "\n" + ("\n## Every method\n\n" if heading else "\n")


def _sweep(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One optimizer's sweep, mean ± std over seeds at each F."""
    fractions = sorted({r["sweep_fraction"] for r in points})
    at = [[r for r in points if r["sweep_fraction"] == f] for f in fractions]
    accuracy = [[100 * r["final_test_accuracy"] for r in runs] for runs in at]
    cpu = [_cpu(runs) for runs in at]
    return {
        "baseline": at[-1][0]["method"],
        "fractions": fractions,
        "labels": [runs[0]["method"] for runs in at],
        "seeds": min(len(runs) for runs in at),
        "accuracy_mean": [statistics.fmean(a) for a in accuracy],
        "accuracy_std": [sample_std(a) for a in accuracy],
        "cpu_time_mean": [None if c is None else statistics.fmean(c) for c in cpu],
        "cpu_time_std": [None if c is None else sample_std(c) for c in cpu],
    }


def _row(label: str, runs: Sequence[Mapping[str, Any]], sweep: Mapping[str, Any]) -> dict:
    accuracy = [100 * r["final_test_accuracy"] for r in runs]
    curve = zip(sweep["fractions"], sweep["accuracy_mean"], strict=True)
    f_star, status = equal_fraction(curve, statistics.fmean(accuracy))
    per_seed = [r["equal_accuracy"] for r in runs]
    within = sum(e["status"] == "within" for e in per_seed)
    cpu = _cpu(runs)
    row = {
        "method": label,
        "sweep": sweep["baseline"],
        "seeds": len(runs),
        "accuracy_mean": statistics.fmean(accuracy),
        "accuracy_std": sample_std(accuracy),
        "cpu_time_mean": None if cpu is None else statistics.fmean(cpu),
        "cpu_time_std": None if cpu is None else sample_std(cpu),
        "f_star": f_star,
        "status": status,
        "f_min": sweep["fractions"][0],
        "f_max": sweep["fractions"][-1],
        "backward_cost": statistics.fmean(e["backward_cost"] for e in per_seed),
        "cpu_cost": _mean([e["cpu_cost"] for e in per_seed]),
        "seeds_within": within,
    }
    changes = [e.get("change_at_equal_cpu_pts") for e in per_seed]
    row["change_at_equal_cpu_seeds"] = sum(c is not None for c in changes)
    row["change_at_equal_cpu_mean"] = _mean(changes)
    row["change_at_equal_cpu_std"] = None if None in changes else sample_std(changes)
    for kind in ("backward", "cpu"):
        values = [e[f"speedup_{kind}"] for e in per_seed] if within == len(runs) else [None]
        row[f"speedup_{kind}_mean"] = _mean(values)
        row[f"speedup_{kind}_std"] = None if None in values else sample_std(values)
    return row


def _f_star(row: Mapping[str, Any]) -> str:
    if row["status"] == "above":
        return f"> {row['f_max']:g} (beyond the best full run)"
    if row["status"] == "below":
        return f"< {row['f_min']:g} (below the smallest budget)"
    return f"{row['f_star']:.3g}"


def _speedup(mean: float | None, std: float | None, within: int, seeds: int) -> str:
    if within < seeds:
        return f"— ({within}/{seeds} seeds within the sweep)"
    return "—" if mean is None else f"{mean:.2f}× ± {std:.2f}"


def _change(row: Mapping[str, Any]) -> str:
    if row["change_at_equal_cpu_mean"] is None:
        seeds = f"{row['change_at_equal_cpu_seeds']}/{row['seeds']}"
        return f"— ({seeds} seeds within the sweep's CPU times)"
    return f"{row['change_at_equal_cpu_mean']:+.2f} ± {row['change_at_equal_cpu_std']:.2f}"


def _optimizer(record: Mapping[str, Any]) -> str:
    """The record's optimizer with its options, as a key: one sweep per optimizer."""
    return json.dumps(record["config"]["methods"]["optimizer"], sort_keys=True)


def _cpu(runs: Sequence[Mapping[str, Any]]) -> list[float] | None:
    times = [r.get("train_cpu_s") or None for r in runs]
    return None if None in times else times


def _mean(values: Sequence[float | None]) -> float | None:
    return None if None in values else statistics.fmean(values)
