"""The SRS-against-GRAD-MATCH table in the paper's shape, and its Pareto plot.

    python benchmarks/srs_vs_gradmatch_summary.py benchmarks/srs_vs_gradmatch \
        [benchmarks/srs_vs_gradmatch_ablation]

Reads ``results.jsonl`` from the bench folder, prints markdown (the table, the
selection cost, the checks of the expected shape) and writes ``pareto.png`` there.
With a second folder holding the ``gradmatch:R[/interval=10]/match=false`` runs,
it also prints the ablation: random batches with GRAD-MATCH's warm start.

Each folder's ``report.md`` is re-rendered from its ``results.jsonl`` with the
current report code (the bench command it names is kept): the main runs were
recorded before the report had its subset-selection columns.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

FAMILIES = {  # column -> (method prefix, options suffix)
    "SRS R1": ("srs", ""),
    "SRS R10": ("srs", "/interval=10"),
    "GM R1": ("gradmatch", ""),
    "GM R10": ("gradmatch", "/interval=10"),
}


def load(folder: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for line in (folder / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        runs.setdefault(record["method"].removesuffix("+sgd"), []).append(record)
    return runs


def stats(runs: list[dict], key) -> tuple[float, float]:
    values = [key(r) for r in runs]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def accuracy(r: dict) -> float:
    return 100 * r["final_test_accuracy"]


def train_time(r: dict) -> float:
    return r["train_time_s"]


def ratios(runs: dict) -> list[str]:
    found = {label.split(":")[1].split("/")[0] for label in runs if ":" in label}
    return sorted(found, key=float)


def cell(runs: list[dict]) -> str:
    (a, sa), (t, st) = stats(runs, accuracy), stats(runs, train_time)
    return f"{a:.2f} ± {sa:.2f} / {t:.1f} ± {st:.1f}"


def label(family: str, ratio: str) -> str:
    prefix, suffix = FAMILIES[family]
    return f"{prefix}:{ratio}{suffix}"


def table(runs: dict) -> list[str]:
    lines = ["| ratio | " + " | ".join(FAMILIES) + " |", "|---|" + "---|" * len(FAMILIES)]
    full = cell(runs["full"])
    lines.append("| 100% | " + " | ".join([full] * len(FAMILIES)) + " |")
    for ratio in ratios(runs):
        cells = [cell(runs[label(f, ratio)]) for f in FAMILIES]
        lines.append(f"| {float(ratio):.0%} | " + " | ".join(cells) + " |")
    return lines


def selection_costs(runs: dict) -> list[str]:
    lines = [
        "| run | selections per run | seconds per selection | selection share of train time |",
        "|---|---|---|---|",
    ]
    for ratio in ratios(runs):
        for family in ("GM R1", "GM R10"):
            group = runs[label(family, ratio)]
            per = [s["seconds"] for r in group for s in r["sampler"]["per_selection"]]
            share = stats(group, lambda r: r["sampler"]["selection_time_s"] / r["train_time_s"])
            count = statistics.fmean(r["sampler"]["selections"] for r in group)
            lines.append(
                f"| {label(family, ratio)} | {count:g} | {statistics.fmean(per):.2f} ± "
                f"{statistics.stdev(per) if len(per) > 1 else 0:.2f} | "
                f"{100 * share[0]:.1f} % |"
            )
    return lines


def shape_checks(runs: dict) -> list[str]:
    lines = [
        "| ratio | interval | SRS − GM accuracy (pts) | GM time / SRS time |",
        "|---|---|---|---|",
    ]
    for ratio in ratios(runs):
        for interval, (srs, gm) in (("R1", ("SRS R1", "GM R1")), ("R10", ("SRS R10", "GM R10"))):
            s, g = runs[label(srs, ratio)], runs[label(gm, ratio)]
            diff = stats(s, accuracy)[0] - stats(g, accuracy)[0]
            slower = stats(g, train_time)[0] / stats(s, train_time)[0]
            lines.append(f"| {float(ratio):.0%} | {interval} | {diff:+.2f} | {slower:.2f}× |")
    return lines


def ablation(runs: dict, random: dict) -> list[str]:
    lines = [
        "| ratio | interval | SRS | random batches, GM's warm start | GRAD-MATCH "
        "| GM − random (pts) |",
        "|---|---|---|---|---|---|",
    ]
    for ratio in ratios(runs):
        for interval, srs, gm in (("R1", "SRS R1", "GM R1"), ("R10", "SRS R10", "GM R10")):
            s, g = runs[label(srs, ratio)], runs[label(gm, ratio)]
            r = random[f"{label(gm, ratio)}/match=false"]
            gain = stats(g, accuracy)[0] - stats(r, accuracy)[0]
            lines.append(
                f"| {float(ratio):.0%} | {interval} | {cell(s)} | {cell(r)} | {cell(g)} "
                f"| {gain:+.2f} |"
            )
    return lines


def pareto(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    markers = {"SRS R1": "o-", "SRS R10": "s--", "GM R1": "^-", "GM R10": "v--"}
    for family, style in markers.items():
        points = [runs[label(family, r)] for r in ratios(runs)]
        xs = [stats(p, train_time)[0] for p in points]
        ys, es = zip(*(stats(p, accuracy) for p in points), strict=True)
        ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=2, label=family)
        for x, y, r in zip(xs, ys, ratios(runs), strict=True):
            ax.annotate(
                f"{float(r):.0%}", (x, y), fontsize=6, xytext=(3, -8), textcoords="offset points"
            )
    (fa, fsa), (ft, _) = stats(runs["full"], accuracy), stats(runs["full"], train_time)
    ax.errorbar([ft], [fa], yerr=[fsa], fmt="k*", markersize=10, label="full data")
    ax.set_xscale("log")
    ax.set_xlabel("training wall-clock time (s, selection included, evaluation excluded)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Fashion-MNIST: accuracy against training time (mean ± std over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def rerender_report(folder: Path) -> None:
    from sievetrain.bench import write_report
    from sievetrain.files import read_jsonl

    command = (folder / "report.md").read_text().split("Command: `", 1)[1].split("`", 1)[0]
    write_report(folder, read_jsonl(folder / "results.jsonl"), command=command)


def main(folder: str, ablation_folder: str | None = None) -> None:
    for path in (folder, ablation_folder):
        if path is not None:
            rerender_report(Path(path))
    runs = load(Path(folder))
    seeds = len(runs["full"])
    print(f"Accuracy (%) / training time (s), mean ± std over {seeds} seeds:\n")
    print("\n".join(table(runs)))
    print("\nGRAD-MATCH's selections (their time is inside the training time above):\n")
    print("\n".join(selection_costs(runs)))
    print("\nExpected shape: SRS as accurate or more, and faster, at equal ratio and interval.\n")
    print("\n".join(shape_checks(runs)))
    if ablation_folder is not None:
        print("\nAblation, accuracy (%) / training time (s):\n")
        print("\n".join(ablation(runs, load(Path(ablation_folder)))))
    pareto(runs, Path(folder) / "pareto.png")


if __name__ == "__main__":
    main(*sys.argv[1:3])
