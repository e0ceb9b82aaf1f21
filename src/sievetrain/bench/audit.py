"""The report's view of data regimes: what was done to the data, what each method
backpropagated of each kind of sample (the selection audit, :mod:`sievetrain.audit`),
under a long tail the balanced and worst-class test accuracy, and what a method's
reference model cost (RHO-LOSS, Rho-1) with the tokens Rho-1 kept of each kind."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from sievetrain.bench.compare import method_labels, sample_std

__all__ = [
    "audit_rows",
    "audit_section",
    "imbalance_section",
    "reference_rows",
    "reference_section",
    "regimes_line",
]


def regimes_line(records: Sequence[dict[str, Any]]) -> str | None:
    """One line naming the regimes applied to the training data (None: clean data)."""
    regimes = records[0].get("regimes")
    if not regimes:
        return None
    parts = []
    for name, options in regimes.items():
        if name == "data_seed":
            continue
        shown = ", ".join(
            f"{k}={v}" for k, v in options.items() if k not in ("source", "class_sizes", "pairs")
        )
        extra = ""
        if "pairs" in options:
            extra = "; pairs " + ", ".join(f"{a}↔{b}" for a, b in options["pairs"])
        if "source" in options:
            extra = f"; text: {_source(options['source'])}"
        if "class_sizes" in options:
            extra = f"; class sizes {options['class_sizes']}"
        parts.append(f"{name} ({shown}{extra})")
    return f"Regimes (training split only, data seed {regimes.get('data_seed', 0)}): " + "; ".join(
        parts
    )


def audit_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and flag: the flag's share of the data and, mean ± std over seeds,
    its share of the backpropagated samples, their ratio, and the ratio in the first
    and the last epoch."""
    rows = []
    for label in method_labels(records):
        runs = [r for r in records if r["method"] == label and r.get("selection_audit")]
        if not runs:
            continue
        for flag in runs[0]["selection_audit"]["flags"]:
            groups = [r["selection_audit"]["flags"][flag] for r in runs]
            if not groups[0]["data_share"]:
                continue
            shares = [100 * g["backprop_share"] for g in groups]
            ratios = [g["ratio"] for g in groups]
            rows.append(
                {
                    "method": label,
                    "flag": flag,
                    "data_share": 100 * groups[0]["data_share"],
                    "backprop_share_mean": statistics.fmean(shares),
                    "backprop_share_std": sample_std(shares),
                    "ratio_mean": statistics.fmean(ratios),
                    "ratio_std": sample_std(ratios),
                    "first_epoch_ratio": _epoch_ratio(groups, 0),
                    "last_epoch_ratio": _epoch_ratio(groups, -1),
                    "full_data": _full_data(runs[0]),
                }
            )
    return rows


def audit_section(records: Sequence[dict[str, Any]]) -> str:
    """The selection audit as markdown: a table per flag, a sentence per method, and
    under a long tail the ratio per class; empty when the data has no flags."""
    rows = audit_rows(records)
    lines = []
    if rows:
        lines += [
            "## Selection audit",
            "",
            "Each kind of sample's share of the backpropagated samples against its share of "
            "the training data (ratio 1: as in the data; above 1: the method prefers them; "
            "below 1: it avoids them); mean ± std over seeds.",
            "",
            "| method | samples | share of data (%) | share backpropagated (%) | ratio | "
            "ratio, first epoch | ratio, last epoch |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['method']} | {r['flag']} | {r['data_share']:.1f} | "
                f"{r['backprop_share_mean']:.1f} ± {r['backprop_share_std']:.1f} | "
                f"{r['ratio_mean']:.2f} ± {r['ratio_std']:.2f} | "
                f"{_cell(r['first_epoch_ratio'])} | {_cell(r['last_epoch_ratio'])} |"
            )
        lines.append("")
        lines += [_sentence(r) for r in rows if not r["full_data"]] + [""]
    if _long_tail(records):
        lines += _class_table(records)
    return "\n".join(lines) + ("\n" if lines else "")


def imbalance_section(records: Sequence[dict[str, Any]]) -> str:
    """Balanced and worst-class test accuracy per method, under a long tail (else empty)."""
    if not _long_tail(records):
        return ""
    lines = [
        "## Balanced and worst-class test accuracy",
        "",
        "The test set is balanced; balanced accuracy is the mean of the classes' accuracies.",
        "",
        "| method | test accuracy (%) | balanced accuracy (%) | worst-class accuracy (%) |",
        "|---|---|---|---|",
    ]
    for label in method_labels(records):
        runs = [r for r in records if r["method"] == label]
        cells = [
            _spread([100 * (r.get(key) or 0.0) for r in runs])
            for key in (
                "final_test_accuracy",
                "balanced_test_accuracy",
                "worst_class_test_accuracy",
            )
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n"


def reference_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method with a reference model, means over seeds: its training's backward
    passes and share of the method's, its scoring forwards, its CPU seconds and share of
    the method's training CPU time, its best validation loss, and for token selection
    the share of tokens kept and each flag's share of the tokens and of the kept ones."""
    rows = []
    for label in method_labels(records):
        runs = [r for r in records if r["method"] == label]
        stats = [r.get("selector") or {} for r in runs]
        if not all("samples_reference_backpropagated" in s for s in stats):
            continue
        reference = [s["samples_reference_backpropagated"] for s in stats]
        cpu = [r["cpu_breakdown_s"].get("reference", 0.0) for r in runs]
        row = {
            "method": label,
            "reference_backpropagated": statistics.fmean(reference),
            "backprop_share": statistics.fmean(
                n / r["samples_backpropagated"] for n, r in zip(reference, runs, strict=True)
            ),
            "samples_scored": statistics.fmean(s["samples_scored"] for s in stats),
            "cpu_s": statistics.fmean(cpu),
            "cpu_share": statistics.fmean(
                c / r["train_cpu_s"] for c, r in zip(cpu, runs, strict=True)
            ),
            "validation_loss": statistics.fmean(
                min(min(losses) for losses in s["reference_validation_loss"]) for s in stats
            ),
        }
        if all(s.get("tokens_seen") for s in stats):
            row["tokens_kept"] = statistics.fmean(
                s["tokens_kept"] / s["tokens_seen"] for s in stats
            )
            row["tokens_by_flag"] = {
                flag: {
                    key: statistics.fmean(s["tokens_by_flag"][flag][key] for s in stats)
                    for key in ("share_of_tokens", "share_of_kept_tokens")
                }
                for flag in stats[0].get("tokens_by_flag", {})
            }
        rows.append(row)
    return rows


def reference_section(records: Sequence[dict[str, Any]]) -> str:
    """What each method's reference model cost, as markdown (empty: no such method)."""
    rows = reference_rows(records)
    if not rows:
        return ""
    lines = [
        "## Reference model",
        "",
        "What the reference model cost, inside each method's figures above (mean over "
        "seeds): its training's backward passes (counted in the method's backward passes "
        "and its budget F), its forwards without gradients (each epoch's validation, then "
        "scoring every training sample once, without augmentation), its CPU time (the "
        "`reference` phase, inside the method's CPU time), and its best loss on its own "
        "validation part.",
        "",
        "| method | reference backward passes | share of the method's (%) | samples scored | "
        "reference CPU (s) | share of the method's CPU time (%) | reference validation loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['reference_backpropagated']:,.0f} | "
            f"{100 * r['backprop_share']:.1f} | {r['samples_scored']:,.0f} | "
            f"{r['cpu_s']:.1f} | {100 * r['cpu_share']:.1f} | {r['validation_loss']:.3f} |"
        )
    lines.append("")
    for r in rows:
        if "tokens_kept" not in r:
            continue
        flags = "".join(
            f"; {flag} tokens: {100 * v['share_of_tokens']:.1f}% of the tokens, "
            f"{100 * v['share_of_kept_tokens']:.1f}% of the kept ones"
            for flag, v in r["tokens_by_flag"].items()
        )
        lines.append(
            f"- `{r['method']}` backpropagated {100 * r['tokens_kept']:.1f}% of the "
            f"target tokens{flags}."
        )
    return "\n".join(lines) + "\n\n"


def _class_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """Per method, each class's share backpropagated / its share of the data."""
    runs = [r for r in records if r.get("selection_audit", {}).get("classes")]
    if not runs:
        return []
    data = runs[0]["selection_audit"]["classes"]["data_share"]
    header = " | ".join(f"class {c}" for c in range(len(data)))
    lines = [
        "Per class under the long tail: share of the data (%), then each method's ratio "
        "of share backpropagated to share of the data (mean over seeds).",
        "",
        f"| method | {header} |",
        "|---|" + "---|" * len(data),
        "| share of data (%) | " + " | ".join(f"{100 * s:.1f}" for s in data) + " |",
    ]
    for label in method_labels(runs):
        mine = [r["selection_audit"]["classes"]["ratio"] for r in runs if r["method"] == label]
        means = [statistics.fmean(r[c] for r in mine) for c in range(len(data))]
        lines.append(f"| {label} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    return lines + [""]


def _sentence(row: dict[str, Any]) -> str:
    return (
        f"- `{row['method']}` trains {row['flag']} samples at {row['ratio_mean']:.2f}× "
        "their share "
        f"({row['backprop_share_mean']:.1f}% of its backward passes, "
        f"{row['data_share']:.1f}% of the data)."
    )


def _epoch_ratio(groups: list[dict[str, Any]], epoch: int) -> float | None:
    values = [g["per_epoch"][epoch] for g in groups if g["per_epoch"]]
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(v / g["data_share"] for v, g in zip(values, groups, strict=True))


def _full_data(record: dict[str, Any]) -> bool:
    """Whether the run is full data (any budget) with no selector: nothing to audit."""
    methods = record["config"]["methods"]
    return methods["sampler"]["method"] == "full" and not methods.get("selector")


def _long_tail(records: Sequence[dict[str, Any]]) -> bool:
    return "long_tail" in (records[0].get("regimes") or {})


def _source(source: dict[str, Any]) -> str:
    """``python-stdlib (Python 3.11.7, 168 files, 4,696,626 characters)``."""
    details = [f"Python {source['python']}"] if "python" in source else []
    details += [f"{source[k]:,} {k}" for k in ("files", "characters") if k in source]
    return f"{source.get('text', 'text')} ({', '.join(details)})"


def _spread(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {sample_std(values):.2f}"


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"
