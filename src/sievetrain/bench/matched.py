"""Budget-matched baselines: full data trained for the compute a method spends.

A sampling method that backpropagates a fraction F of full data's samples is
compared, at equal compute, with ``full/budget=F``: full data for F of the run's
optimizer steps, its schedule compressed to end, fully decayed, at that budget
(a saving that vanishes against a shorter, fully decayed full-data schedule is no
saving). F comes from each method's options (``Options.backprop_fraction``); a
method whose F only a run can tell (InfoBatch) is matched to the fraction its
first seed's run measured, once that run has finished.

Functional core: :func:`matched_fraction`, :func:`budget_run`, :func:`add_matched`,
:func:`resolve_measured`, :func:`compare_seed`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sievetrain.bench.registry import REGISTRY, Component, RunSpec
from sievetrain.options import RunContext

if TYPE_CHECKING:
    from sievetrain.bench.spec import Bench

__all__ = [
    "Match",
    "add_matched",
    "budget_run",
    "compare_seed",
    "matched_fraction",
    "measured_fraction",
    "planned_runs",
    "resolve_measured",
]

DIGITS = 3  # F is rounded to 0.001: budgets that close train the same


@dataclass(frozen=True)
class Match:
    """A method's budget-matched baseline: its label and F (None until measured)."""

    source: Literal["expected", "measured"]
    budget: float | None = None
    baseline: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def matched_fraction(run: RunSpec, context: RunContext) -> float | None:
    """The run's expected fraction of full data's backward passes: the product over
    its levels (SRS at 0.3 with SIFT at 0.5 backpropagates 0.15); None when one of
    its methods can only be measured."""
    fraction = 1.0
    for component in run.components():
        share = component.options.backprop_fraction(context)
        if share is None:
            return None
        fraction *= share
    return round(fraction, DIGITS)


def measured_fraction(record: Mapping[str, Any]) -> float:
    """Backward passes a finished run made, as a fraction of full data's."""
    full = record["epochs"] * record["train_size"]
    return round(record["samples_backpropagated"] / full, DIGITS)


def budget_run(fraction: float, run: RunSpec) -> RunSpec:
    """``full/budget=F`` with ``run``'s optimizer (options resolved as in ``run``):
    what differs is only the data."""
    full = REGISTRY["full"]
    sampler = Component(full, full.options(**{**full.pinned, "budget": fraction}))
    optimizers = [p for p in run.label.split("+") if _level(p) == "optimizer"]
    label = "+".join([f"full/budget={fraction:g}", *optimizers])
    return RunSpec(label, sampler, None, run.optimizer)


def add_matched(
    runs: Sequence[RunSpec], context: RunContext
) -> tuple[tuple[RunSpec, ...], dict[str, Match]]:
    """``runs`` followed by one budget-matched baseline per distinct F, and each
    method's match. A run that is a baseline itself (full data, any budget, no
    selector) gets none; a run that equals its own baseline neither; a baseline
    equal to a run already listed is that run."""
    runs, matches = list(runs), {}
    for run in list(runs):
        if run.sampler.method.name == "full" and run.selector is None:
            continue
        fraction = matched_fraction(run, context)
        if fraction is None:
            matches[run.label] = Match("measured")
            continue
        baseline = _place(budget_run(fraction, run), runs)
        if baseline.describe() != run.describe():
            matches[run.label] = Match("expected", fraction, baseline.label)
    return tuple(runs), matches


def resolve_measured(bench: Bench, records: Sequence[Mapping[str, Any]]) -> Bench:
    """``bench`` with the baseline of each measured match whose first seed's run
    is among ``records`` placed at the end of its runs (or found among them)."""
    runs, matches = list(bench.runs), dict(bench.matches)
    first = bench.seeds[0]
    for label, match in bench.matches.items():
        if match.budget is not None:
            continue
        done = [r for r in records if r["method"] == label and r["seed"] == first]
        if done:
            run = next(r for r in runs if r.label == label)
            fraction = min(max(measured_fraction(done[0]), 10**-DIGITS), 1.0)
            baseline = _place(budget_run(fraction, run), runs)
            matches[label] = Match("measured", fraction, baseline.label)
    return dataclasses.replace(bench, runs=tuple(runs), matches=matches)


def compare_seed(
    record: dict[str, Any], records: Sequence[Mapping[str, Any]], matches: Mapping[str, Match]
) -> None:
    """Add to ``record`` its seed's accuracy changes against its matched baseline
    (``matched``), or as a baseline, those of its methods (``matched_changes``),
    in points, where the other run of the pair has finished."""
    seed, label = record["seed"], record["method"]
    accuracy = {r["method"]: r["final_test_accuracy"] for r in records if r["seed"] == seed}
    match = matches.get(label)
    if match is not None:
        record["matched"] = match.to_dict()
        if match.baseline in accuracy:
            change = 100 * (record["final_test_accuracy"] - accuracy[match.baseline])
            record["matched"]["accuracy_change_pts"] = change
    changes = {
        method: 100 * (accuracy[method] - record["final_test_accuracy"])
        for method, m in matches.items()
        if m.baseline == label and method in accuracy
    }
    if changes:
        record["matched_changes"] = changes


def planned_runs(bench: Bench) -> int:
    """Runs the bench will make: a measured match not resolved yet adds at most one
    baseline per seed."""
    pending = sum(match.budget is None for match in bench.matches.values())
    return (len(bench.runs) + pending) * len(bench.seeds)


def _place(baseline: RunSpec, runs: list[RunSpec]) -> RunSpec:
    """The run of ``runs`` that computes what ``baseline`` does, else ``baseline``
    appended to ``runs``."""
    for run in runs:
        if run.describe() == baseline.describe():
            return run
    runs.append(baseline)
    return baseline


def _level(part: str) -> str | None:
    method = REGISTRY.get(re.split("[:/]", part, maxsplit=1)[0])
    return method.level if method is not None else None
