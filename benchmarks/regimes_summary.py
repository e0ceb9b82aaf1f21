"""One table per data regime, from benches run with ``--matched --frontier``.

Reads each folder's ``summary.json`` (written by the bench's report) and prints, per
method: its backward cost, its accuracy change against full data over the same epochs
and at equal compute (paired by seed), F* and the speed-up at equal accuracy (in
backward passes and in CPU time), the change at equal CPU time, and the selection audit
(each flag's ratio of share backpropagated to share of the data, overall and in the
first and last epoch), then what a reference model cost where a method has one. Each
argument is ``REGIME=FOLDER`` (split at its last "="):

    python benchmarks/regimes_summary.py "clean=benchmarks/regimes/fashion/clean" ...

With ``--compact`` first, one matrix instead: methods × regimes, each cell the speed-up
at equal accuracy in CPU time (in backward passes).

Speed-ups are mean ± std over the seeds when every seed's accuracy lies on its sweep;
otherwise the value from the means (F* of the mean sweep over the mean cost), marked
"(means; k/n seeds on the sweep)". Ends with the range of wall/CPU time over the runs.
"""

from __future__ import annotations

import bisect
import json
import statistics
import sys
from pathlib import Path

from sievetrain.files import read_jsonl

COLUMNS = (
    "method",
    "accuracy (%)",
    "backward cost",
    "Δ vs full, same epochs (pts)",
    "Δ at equal compute (pts)",
    "F*",
    "speed-up at equal accuracy, backward",
    "speed-up at equal accuracy, CPU",
    "Δ at equal CPU time (pts)",
    "audit: ratio (first → last epoch)",
)


def table(regime: str, folder: Path) -> list[str]:
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    matched = {row["method"]: row for row in summary["matched"]}
    audit: dict[str, list[str]] = {}
    for row in summary["selection_audit"]:
        audit.setdefault(row["method"], []).append(
            f"{row['flag']} {row['ratio_mean']:.2f}× ({_num(row['first_epoch_ratio'])} → "
            f"{_num(row['last_epoch_ratio'])})"
        )
    records = read_jsonl(folder / "results.jsonl")
    for method, ratios in _class_ratios(records).items():
        audit.setdefault(method, []).append(
            f"rarest class {ratios[-1]:.2f}×, largest {ratios[0]:.2f}×"
        )
    sweep = _sweep(summary)
    full = sweep["accuracy_mean"][-1]
    lines = [
        f"### {regime}",
        "",
        f"Full data: {full:.2f} ± {sweep['accuracy_std'][-1]:.2f} %; the sweep "
        + ", ".join(
            f"F={f:g}: {a:.2f}"
            for f, a in zip(sweep["fractions"], sweep["accuracy_mean"], strict=True)
        )
        + ".",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in summary["equal_accuracy"]:
        method = row["method"]
        match = matched.get(method, {})
        cells = [
            f"`{method}`",
            f"{row['accuracy_mean']:.2f} ± {row['accuracy_std']:.2f}",
            f"{row['backward_cost']:.3g}",
            _signed(match.get("delta_vs_full")),
            _spread(match.get("delta_mean"), match.get("delta_std")),
            _f_star(row),
            _speedup(row, "backward", row["backward_cost"], sweep),
            _speedup(row, "cpu", row["cpu_cost"], sweep),
            _spread(row["change_at_equal_cpu_mean"], row["change_at_equal_cpu_std"]),
            "; ".join(audit.get(method, [])) or "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", *_reference(summary), *_imbalance(records, summary), ""]


def _sweep(summary: dict) -> dict:
    """The full-data sweep of the bench's baseline (a bench of optimizers has one each)."""
    (sweep,) = (s for s in summary["full_data_sweeps"] if s["baseline"] == summary["baseline"])
    return sweep


def _reference(summary: dict) -> list[str]:
    """What each method's reference model cost (RHO-LOSS, Rho-1), inside its figures."""
    lines = []
    for r in summary.get("reference", []):
        line = (
            f"- `{r['method']}`: its reference model made {r['reference_backpropagated']:,.0f} "
            f"backward passes ({100 * r['backprop_share']:.0f} % of the method's) and took "
            f"{r['cpu_s']:.1f} s CPU ({100 * r['cpu_share']:.0f} % of the method's)"
        )
        if "tokens_kept" in r:
            line += f"; it kept {100 * r['tokens_kept']:.0f} % of the target tokens"
            for flag, v in r["tokens_by_flag"].items():
                line += (
                    f", {flag} {100 * v['share_of_kept_tokens']:.1f} % of the kept ones "
                    f"({100 * v['share_of_tokens']:.1f} % of all)"
                )
        lines.append(line + ".")
    return [*lines, ""] if lines else []


def _class_ratios(records: list[dict]) -> dict[str, list[float]]:
    """Under a long tail: each method's mean ratio per class (class 0 the largest)."""
    if "long_tail" not in (records[0].get("regimes") or {}):
        return {}
    by_method: dict[str, list[list[float]]] = {}
    for record in records:
        by_method.setdefault(record["method"], []).append(
            record["selection_audit"]["classes"]["ratio"]
        )
    return {m: [statistics.fmean(c) for c in zip(*r, strict=True)] for m, r in by_method.items()}


def _imbalance(records: list[dict], summary: dict) -> list[str]:
    """Under a long tail: balanced and worst-class test accuracy per method."""
    if "long_tail" not in (records[0].get("regimes") or {}):
        return []
    lines = [
        "| method | balanced accuracy (%) | worst-class accuracy (%) |",
        "|---|---|---|",
    ]
    for method in [summary["baseline"]] + [row["method"] for row in summary["equal_accuracy"]]:
        runs = [r for r in records if r["method"] == method]
        cells = []
        for key in ("balanced_test_accuracy", "worst_class_test_accuracy"):
            values = [100 * r[key] for r in runs]
            cells.append(f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}")
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return lines


def _speedup(row: dict, kind: str, cost: float | None, sweep: dict) -> str:
    mean, std = row[f"speedup_{kind}_mean"], row[f"speedup_{kind}_std"]
    if mean is not None:
        return f"{mean:.2f}× ± {std:.2f}"
    if row["status"] != "within" or cost is None:
        return "—"
    if kind == "backward":
        value = row["f_star"] / cost
    else:  # the mean sweep's CPU time at F* over the method's mean CPU time
        value = _interpolate(sweep["fractions"], sweep["cpu_time_mean"], row["f_star"])
        value /= row["cpu_time_mean"]
    return f"{value:.2f}× (means; {row['seeds_within']}/{row['seeds']} seeds on the sweep)"


def _f_star(row: dict) -> str:
    if row["status"] == "above":
        return f"> {row['f_max']:g} (beyond the best full run)"
    if row["status"] == "below":
        return f"< {row['f_min']:g} (below the smallest budget)"
    return f"{row['f_star']:.3g}"


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    return ys[i - 1] + (x - xs[i - 1]) / (xs[i] - xs[i - 1]) * (ys[i] - ys[i - 1])


def _spread(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:+.2f} ± {std:.2f}" if std is not None else f"{mean:+.2f}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def compact(regimes: list[tuple[str, Path]]) -> list[str]:
    """One row per method, one column per regime: the speed-up at equal accuracy in CPU
    time and, in parentheses, in backward passes."""
    summaries = [
        json.loads((folder / "summary.json").read_text(encoding="utf-8")) for _, folder in regimes
    ]
    methods = list(dict.fromkeys(row["method"] for s in summaries for row in s["equal_accuracy"]))
    lines = [
        "| method | " + " | ".join(name for name, _ in regimes) + " |",
        "|---|" + "---|" * len(regimes),
    ]
    for method in methods:
        cells = []
        for summary in summaries:
            row = next((r for r in summary["equal_accuracy"] if r["method"] == method), None)
            sweep = _sweep(summary)
            if row is None:
                cells.append("—")
            elif row["status"] == "above":
                cells.append("beyond full data")
            elif row["status"] == "below":
                cells.append(f"below F = {row['f_min']:g}")
            else:
                cpu = _speedup(row, "cpu", row["cpu_cost"], sweep).split(" ")[0]
                backward = _speedup(row, "backward", row["backward_cost"], sweep).split(" ")[0]
                cells.append(f"{cpu} ({backward})")
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--compact":
        pairs = [a.rpartition("=") for a in argv[1:]]
        print("\n".join(compact([(name, Path(folder)) for name, _, folder in pairs])))
        return 0
    ratios = []
    for argument in argv:
        regime, _, folder = argument.rpartition("=")
        print("\n".join(table(regime, Path(folder))))
        for record in read_jsonl(Path(folder) / "results.jsonl"):
            ratios.append(record["train_time_s"] / record["train_cpu_s"])
    print(f"wall/CPU over the {len(ratios)} runs: {min(ratios):.3f}–{max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
