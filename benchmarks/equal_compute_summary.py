"""One table of every method at equal compute, from benches run with ``--matched``.

Reads each folder's ``summary.json`` (written by the bench's report) and prints, per
method: its budget F, its accuracy change against full data over the same epochs,
against full data trained for the same compute (``full/budget=F``, paired by seed),
the verdict, and its training time relative to full data and to its matched
baseline (CPU time, which a busy machine does not stretch; "timing disturbed" where
the report flagged either run).

Each argument is a bench folder, or ``TASK=FOLDER`` to name its task in the table:

    python benchmarks/equal_compute_summary.py "Fashion-MNIST=benchmarks/fashion_mnist_matched"
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

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


def main(folders: list[str]) -> None:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for argument in folders:
        task, _, folder = argument.rpartition("=")
        path = Path(folder)
        lines += ["| " + " | ".join(row) + " |" for row in rows(task or path.name, path)]
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
