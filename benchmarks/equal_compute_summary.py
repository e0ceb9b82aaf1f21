"""One table of every method at equal compute, from benches run with ``--matched``.

Reads each folder's ``summary.json`` (written by the bench's report) and prints, per
method: its budget F, its accuracy change against full data over the same epochs,
against full data trained for the same compute (``full/budget=F``, paired by seed),
the verdict, and its training time relative to full data and to its matched
baseline (CPU time, which a busy machine does not stretch; "timing disturbed" where
the report flagged either run).

Each argument is a bench folder, or ``TASK=FOLDER`` to name its task in the table:

    python benchmarks/equal_compute_summary.py "Fashion-MNIST=benchmarks/fashion_mnist_matched"

With ``--equal-time BENCH=BASELINE``, it pairs instead, seed by seed, every matched
method of the bench in BENCH with the one full-data run of the bench in BASELINE
(a budget chosen to take the methods' time), with the report's own comparison:

    python benchmarks/equal_compute_summary.py --equal-time \
        benchmarks/sift_matched/fashion-mnist=benchmarks/sift_time_matched/fashion-mnist

Both modes end with the range of wall/CPU time over every run they read.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from sievetrain.bench.compare import matched_rows, matched_table
from sievetrain.files import read_jsonl

COLUMNS = (
    "task",
    "method",
    "F",
    "Δ acc vs full, same epochs (pts)",
    "Δ acc vs full at equal compute (pts)",
    "verdict at equal compute",
    "CPU time vs full",
    "CPU time vs its matched baseline",
)


def rows(task: str, folder: Path) -> list[list[str]]:
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    methods = {row["method"]: row for row in summary["methods"]}
    full = re.fullmatch(r"full(\+.*)?", summary["baseline"]) is not None  # speed-ups vs full
    out = []
    for match in summary["matched"]:
        method, baseline = methods[match["method"]], methods[match["baseline"]]
        out.append(
            [
                task,
                f"`{match['method']}`",
                f"{match['budget']:g} ({match['budget_source']})",
                "—" if match["delta_vs_full"] is None else f"{match['delta_vs_full']:+.2f}",
                f"{match['delta_mean']:+.2f} ± {match['delta_std']:.2f}",
                match["verdict"],
                _ratio(method, 1 / method["cpu_speedup"]) if full else "—",
                _ratio(method, method["cpu_time_mean"] / baseline["cpu_time_mean"], baseline),
            ]
        )
    return out


def _ratio(row: dict, value: float, other: dict | None = None) -> str:
    if not row["timing_trusted"] or (other is not None and not other["timing_trusted"]):
        return "timing disturbed"
    return f"{value:.2f}×"


def equal_time(bench: Path, baseline: Path) -> str:
    """The matched methods of ``bench`` against ``baseline``'s one run, by seed."""
    methods, (base, *others) = (
        read_jsonl(bench / "results.jsonl"),
        read_jsonl(baseline / "results.jsonl"),
    )
    base_runs = [base, *others]
    label = base["method"]
    budget = float(label.split("budget=")[1].split("+")[0])
    paired = [
        {**r, "matched": {"baseline": label, "budget": budget, "source": "equal time"}}
        for r in methods
        if r.get("matched")
    ]
    cpu = sum(r["train_cpu_s"] for r in base_runs) / len(base_runs)
    lines = [matched_table(matched_rows([*paired, *base_runs]))]
    for method in dict.fromkeys(r["method"] for r in paired):
        runs = [r for r in paired if r["method"] == method]
        mean = sum(r["train_cpu_s"] for r in runs) / len(runs)
        lines.append(f"- `{method}`: CPU time {mean / cpu:.2f}× `{label}`'s ({cpu:.1f} s)")
    return "\n".join(lines)


def wall_cpu_range(folders: list[Path]) -> str:
    records = [r for folder in folders for r in read_jsonl(folder / "results.jsonl")]
    ratios = sorted(r["train_time_s"] / r["train_cpu_s"] for r in records)
    return f"wall/CPU over {len(ratios)} runs: {ratios[0]:.3f} to {ratios[-1]:.3f}; " + (
        f"second highest {ratios[-2]:.3f}" if len(ratios) > 1 else ""
    )


def main(arguments: list[str]) -> None:
    if arguments[:1] == ["--equal-time"]:
        pairs = [a.partition("=")[::2] for a in arguments[1:]]
        for bench, baseline in pairs:
            print(f"{bench} against {baseline}:\n\n{equal_time(Path(bench), Path(baseline))}\n")
        print(wall_cpu_range([Path(p) for pair in pairs for p in pair]))
        return
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    paths = []
    for argument in arguments:
        task, _, folder = argument.rpartition("=")
        paths.append(Path(folder))
        lines += ["| " + " | ".join(row) + " |" for row in rows(task or paths[-1].name, paths[-1])]
    print("\n".join(lines) + "\n\n" + wall_cpu_range(paths))


if __name__ == "__main__":
    main(sys.argv[1:])
