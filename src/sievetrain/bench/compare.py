"""Comparisons the bench report draws from its records: CPU time and whether the
timing can be trusted, and each method against a full-data baseline given the same
compute (``--matched``).

Wall time on a shared machine grows when another process takes the cores while a
process's CPU time does not; so a method whose wall time scatters over seeds, or
whose wall/CPU ratio differs from its seed-mates', gets no speed-up number.
Records written before CPU time was recorded show "—" and are never flagged by
the ratio rule.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from sievetrain.bench.matched import measured_fraction

__all__ = [
    "DISTURBED",
    "SPREAD_LIMIT",
    "RATIO_LIMIT",
    "timing_disturbed",
    "timing_summary",
    "timing_cells",
    "disturbed_notes",
    "matched_rows",
    "matched_table",
    "matched_section",
    "MATCHED_COLUMNS",
    "MATCHED_NOTE",
    "method_labels",
    "sample_std",
]

SPREAD_LIMIT = 0.2  # wall-time sample std over seeds, as a fraction of the mean
RATIO_LIMIT = 0.2  # a seed's wall/CPU ratio off its seed-mates' median, relative
DISTURBED = "timing disturbed"  # what a speed-up cell says instead of a number

MATCHED_COLUMNS = (
    "method",
    "budget F (source)",
    "matched baseline",
    "paired seeds",
    "Δ acc vs matched (pts, mean ± std)",
    "Δ acc vs full, same epochs (pts)",
    "verdict",
)
MATCHED_NOTE = (
    "Each method is compared with a full-data baseline given the same compute: the "
    "baseline trains on all the data for F of full data's optimizer steps, its schedule "
    "compressed to end fully decayed, where F is the share of full data's backward passes "
    "the method makes. Δ is the method's test accuracy minus its baseline's, paired by "
    "seed (mean ± sample std over the paired seeds); a difference counts when its mean "
    "exceeds that std."
)


def timing_disturbed(runs: Sequence[dict[str, Any]]) -> str | None:
    """Why one method's timing over its seeds cannot be trusted, or None.

    Disturbed when the sample std of wall time over seeds exceeds ``SPREAD_LIMIT``
    of its mean, or when a seed's wall/CPU ratio differs from the median ratio of
    the method's other seeds by more than ``RATIO_LIMIT`` of that median. Seeds
    without a recorded CPU time take no part in the ratio rule.

    Args:
        runs: the records of one method, one per seed.
    """
    reasons = []
    walls = [r["train_time_s"] for r in runs]
    if len(walls) > 1:
        spread = statistics.stdev(walls) / statistics.fmean(walls)
        if spread > SPREAD_LIMIT:
            reasons.append(f"wall-time std over seeds is {100 * spread:.0f}% of its mean")
    ratios = {r["seed"]: r["train_time_s"] / r["train_cpu_s"] for r in runs if _cpu(r)}
    offs = []  # (relative deviation, seed, ratio, seed-mates' median) past the limit
    for seed, ratio in ratios.items():
        mates = [v for s, v in ratios.items() if s != seed]
        median = statistics.median(mates) if mates else ratio
        if abs(ratio - median) > RATIO_LIMIT * median:
            offs.append((abs(ratio - median) / median, seed, ratio, median))
    if offs:  # an outlier also shifts its mates' medians: name the seed furthest off
        _, seed, ratio, median = max(offs)
        reasons.append(f"seed {seed}: wall/CPU {ratio:.2f} vs {median:.2f} for its seed-mates")
    return "; ".join(reasons) or None


def timing_summary(
    runs: Sequence[dict[str, Any]], base_runs: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """CPU time and timing trust of one method against the baseline's runs.

    Returns:
        ``cpu_time_mean``/``cpu_time_std`` (s; None unless every seed recorded
        it), ``cpu_speedup`` (baseline's mean CPU time over the method's; None
        when either lacks it), ``timing_disturbed`` (the method's reason or None)
        and ``timing_trusted`` (False when the method or the baseline is disturbed).
    """
    cpu = _cpu_times(runs)
    base_cpu = _cpu_times(base_runs)
    disturbed = timing_disturbed(runs)
    return {
        "cpu_time_mean": None if cpu is None else statistics.fmean(cpu),
        "cpu_time_std": None if cpu is None else sample_std(cpu),
        "cpu_speedup": (
            None
            if cpu is None or base_cpu is None
            else statistics.fmean(base_cpu) / statistics.fmean(cpu)
        ),
        "timing_disturbed": disturbed,
        "timing_trusted": disturbed is None and timing_disturbed(base_runs) is None,
    }


def timing_cells(row: dict[str, Any]) -> list[str]:
    """A summary row's CPU time, wall-time speed-up and CPU-time speed-up cells."""
    cpu, cpu_speedup = "—", "—"
    if row["cpu_time_mean"] is not None:
        cpu = f"{row['cpu_time_mean']:.1f} ± {row['cpu_time_std']:.1f}"
    if row["cpu_speedup"] is not None:
        cpu_speedup = f"{row['cpu_speedup']:.2f}×"
    if not row["timing_trusted"]:
        return [cpu, DISTURBED, DISTURBED]
    return [cpu, f"{row['speedup']:.2f}×", cpu_speedup]


def disturbed_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Lines for under the summary table naming each disturbed method and why
    (none when every method's timing is clean)."""
    notes = [f"- `{r['method']}`: {r['timing_disturbed']}" for r in rows if r["timing_disturbed"]]
    if not notes:
        return []
    return [
        "",
        f"{DISTURBED.capitalize()}: no speed-up is shown for these or against them.",
        *notes,
    ]


def matched_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method whose records carry ``matched``: the method against its
    budget-matched full-data baseline, paired by seed.

    Only seeds both ran are paired. ``deltas`` are per-seed changes in test
    accuracy (points, method − baseline); ``exceeds_spread`` is whether
    |mean| > sample std (None below two paired seeds); ``delta_vs_full`` is the
    method's mean accuracy minus that of full data over the same epochs with the
    same optimizer (``full``, or ``full+adam`` for ``full/budget=F+adam``; points;
    None without such runs).
    """
    rows = []
    for label in method_labels(records):
        runs = [r for r in records if r["method"] == label]
        # A record may carry a match without a baseline (none resolved when it was
        # written): take one that names its baseline, if any seed's does.
        matches = [r["matched"] for r in runs if r.get("matched")]
        if not matches:
            continue
        matched = next((m for m in matches if m.get("baseline")), matches[0])
        base = {r["seed"]: r for r in records if r["method"] == matched["baseline"]}
        paired = [r for r in runs if r["seed"] in base]
        deltas = [
            100 * (r["final_test_accuracy"] - base[r["seed"]]["final_test_accuracy"])
            for r in paired
        ]
        mean = statistics.fmean(deltas) if deltas else None
        std = statistics.stdev(deltas) if len(deltas) > 1 else None
        exceeds = None if std is None else abs(mean) > std
        accuracy = statistics.fmean(r["final_test_accuracy"] for r in runs)
        full = _full_data(records, matched.get("baseline"))
        rows.append(
            {
                "method": label,
                "baseline": matched.get("baseline"),
                "budget": matched.get("budget"),
                "budget_source": matched.get("source"),
                "measured_budget": statistics.fmean(measured_fraction(r) for r in runs),
                "seeds": [r["seed"] for r in paired],
                "deltas": deltas,
                "delta_mean": mean,
                "delta_std": std,
                "exceeds_spread": exceeds,
                "delta_vs_full": 100 * (accuracy - statistics.fmean(full)) if full else None,
                "verdict": _verdict(len(deltas), mean, exceeds),
            }
        )
    return rows


def matched_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``matched_rows``: the bench's verdict at equal compute."""
    lines = ["| " + " | ".join(MATCHED_COLUMNS) + " |", "|" + "---|" * len(MATCHED_COLUMNS)]
    for r in rows:
        source = f" ({r['budget_source']})" if r["budget_source"] else ""
        if r["budget_source"] == "measured" and r["measured_budget"] > (r["budget"] or 1.0):
            source = f" (measured {r['measured_budget']:.3g}, more than full data's: capped)"
        delta = "—"
        if r["delta_mean"] is not None:
            std = "—" if r["delta_std"] is None else f"{r['delta_std']:.2f}"
            delta = f"{r['delta_mean']:+.2f} ± {std}"
        vs_full = "—" if r["delta_vs_full"] is None else f"{r['delta_vs_full']:+.2f}"
        cells = [
            r["method"],
            ("—" if r["budget"] is None else f"{r['budget']:.3g}") + source,
            "—" if r["baseline"] is None else f"`{r['baseline']}`",
            str(len(r["seeds"])),
            delta,
            vs_full,
            r["verdict"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def matched_section(rows: Sequence[dict[str, Any]]) -> str:
    """Heading, explanation and table of ``matched_rows``, then the heading of the
    summary table that follows; empty without matched rows."""
    if not rows:
        return ""
    return f"## At equal compute\n\n{MATCHED_NOTE}\n\n{matched_table(rows)}\n## Every method\n\n"


def _full_data(records: Sequence[dict[str, Any]], baseline: str | None) -> list[float]:
    """Final accuracies of full data over all epochs with the optimizer of the
    method's baseline (``full/budget=0.3+adam`` -> ``full+adam``)."""
    label = "+".join(["full", *(baseline or "full").split("+")[1:]])
    return [r["final_test_accuracy"] for r in records if r["method"] == label]


def _verdict(paired: int, mean: float | None, exceeds: bool | None) -> str:
    if paired == 0:
        return "no matched baseline run on these seeds"
    if paired == 1:
        return "one seed: cannot tell"
    if not exceeds:
        return "no difference beyond the seeds' spread"
    side = "ahead of" if mean > 0 else "behind"
    return f"{side} full data at equal compute"


def _cpu(record: dict[str, Any]) -> float | None:
    """The record's CPU seconds of training; None when not recorded (older records)."""
    cpu = record.get("train_cpu_s")
    return cpu if cpu else None


def _cpu_times(runs: Sequence[dict[str, Any]]) -> list[float] | None:
    times = [_cpu(r) for r in runs]
    return None if not times or None in times else times


def method_labels(records: Sequence[dict[str, Any]]) -> list[str]:
    """The runs' method labels, each once, in the order they first appear."""
    return list(dict.fromkeys(r["method"] for r in records))


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation over seeds; 0 for a single seed."""
    return statistics.stdev(values) if len(values) > 1 else 0.0
