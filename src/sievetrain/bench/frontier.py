"""Speed-up at equal accuracy: how much less compute a method needs for the accuracy
it reaches, read off a sweep of full data over budgets (``--frontier``).

The sweep trains ``full/budget=F`` (full data for F of the run's optimizer steps, its
schedule compressed to end fully decayed; see :mod:`sievetrain.bench.matched`) for
each F given, and F = 1 always: the speed-up is against full data. F* is the budget
full data needs to reach a method's test accuracy, linearly interpolated on the sweep
made non-decreasing in F, never extrapolated. The speed-up at equal accuracy is F*
over the method's cost: in backward passes, and in CPU time (scoring forwards and
anything else a method does are in its CPU time).

Functional core: :func:`add_frontier`, :func:`monotone`, :func:`equal_fraction`,
:func:`equal_accuracy`; :func:`add_equal_accuracy` is what the runner calls as each
run finishes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from sievetrain.bench.matched import budget_run, measured_fraction
from sievetrain.bench.registry import RunSpec
from sievetrain.options import ArgumentError

if TYPE_CHECKING:
    from sievetrain.bench.spec import Bench

__all__ = [
    "Status",
    "add_equal_accuracy",
    "add_frontier",
    "equal_accuracy",
    "equal_fraction",
    "monotone",
    "sweep_fractions",
    "sweep_of",
]

# Where a method's accuracy lies against the sweep: on it (F* is known), above the
# best full run, or below the smallest budget's (F* < F_min); nothing is extrapolated.
Status = Literal["within", "above", "below"]


def sweep_fractions(frontier: Iterable[float]) -> tuple[float, ...]:
    """The sweep's budgets: each F of ``frontier`` checked to lie in (0, 1] and be
    given once, and F = 1 added if missing (the speed-up is against full data);
    ascending.

    Raises:
        ArgumentError: naming the bad or repeated F.
    """
    fractions: list[float] = []
    for value in frontier:
        fraction = float(value)
        if not 0 < fraction <= 1:  # NaN lands here too
            raise ArgumentError(
                f"{{frontier}} has {fraction:g}: every budget F is a fraction of full data's "
                "optimizer steps in (0, 1]",
                frontier="frontier=",
            )
        if fraction in fractions:
            raise ArgumentError(
                f"{{frontier}} lists {fraction:g} more than once: each F is one full-data "
                "run per seed",
                frontier="frontier=",
            )
        fractions.append(fraction)
    return tuple(sorted({*fractions, 1.0}))


def add_frontier(runs: Sequence[RunSpec], fractions: Sequence[float]) -> tuple[RunSpec, ...]:
    """``runs`` led by the full-data sweep ``full/budget=F``, F in ``fractions`` and 1.

    One sweep per distinct optimizer among ``runs`` (each with that optimizer, as
    :func:`~sievetrain.bench.matched.budget_run` builds it), F descending: the runner
    goes seed-major in run order, so each seed's sweep finishes before its methods,
    and full data (F = 1) comes first, the report's baseline. A point that computes
    what a listed run does is that run, moved to the front (a listed ``full`` is the
    F = 1 point); the F = 1 point added is labelled ``full`` (``full+adam``) unless a
    listed run has that label.
    """
    runs = list(runs)
    labels = {run.label for run in runs}
    sweep: list[RunSpec] = []
    for run in _one_per_optimizer(runs):
        for fraction in sorted({*fractions, 1.0}, reverse=True):
            point = budget_run(fraction, run)
            found = [r for r in runs + sweep if r.describe() == point.describe()]
            if found:
                point = found[0]
            elif fraction == 1 and (plain := _plain_full(point.label)) not in labels:
                point = RunSpec(plain, point.sampler, point.selector, point.optimizer)
            if point.label not in {r.label for r in sweep}:
                sweep.append(point)
    points = {r.label for r in sweep}
    return (*sweep, *(r for r in runs if r.label not in points))


def sweep_of(runs: Sequence[RunSpec], fractions: Sequence[float], run: RunSpec) -> dict[float, str]:
    """The label of the run of ``runs`` at each F of the sweep with ``run``'s optimizer
    (F ascending); points not among ``runs`` are left out."""
    sweep = {}
    for fraction in sorted({*fractions, 1.0}):
        point = budget_run(fraction, run).describe()
        found = next((r.label for r in runs if r.describe() == point), None)
        if found is not None:
            sweep[fraction] = found
    return sweep


def monotone(points: Iterable[Sequence[float]]) -> list[list[float]]:
    """The sweep's ``[F, accuracy]`` points sorted by F, accuracy made non-decreasing
    (running maximum): more budget never does worse than a smaller one did."""
    curve, best = [], -math.inf
    for fraction, accuracy in sorted(points):
        best = max(best, accuracy)
        curve.append([fraction, best])
    return curve


def equal_fraction(
    points: Iterable[Sequence[float]], accuracy: float
) -> tuple[float | None, Status]:
    """F*: the budget at which full data first reaches ``accuracy``, by linear
    interpolation on the :func:`monotone` curve of ``points`` (``[F, accuracy]``).

    Returns:
        ``(F*, "within")``; ``(None, "above")`` when ``accuracy`` exceeds the best full
        run's; ``(None, "below")`` when it is below the smallest budget's (F* < F_min).
    """
    curve = monotone(points)
    if accuracy > curve[-1][1]:
        return None, "above"
    if accuracy < curve[0][1]:
        return None, "below"
    i = next(i for i, (_, reached) in enumerate(curve) if reached >= accuracy)
    if i == 0:
        return curve[0][0], "within"
    (f0, a0), (f1, a1) = curve[i - 1], curve[i]  # a0 < accuracy <= a1
    return f0 + (accuracy - a0) / (a1 - a0) * (f1 - f0), "within"


def equal_accuracy(
    record: Mapping[str, Any], sweep_records: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """A method's run against its seed's sweep (records carrying ``sweep_fraction``).

    Returns:
        ``f_star`` and ``status`` (:func:`equal_fraction`); ``backward_cost``, the
        run's backward passes as a fraction of full data's; ``cpu_cost``, its
        training CPU time over that of the F = 1 run; ``speedup_backward`` = F* /
        backward cost; ``speedup_cpu`` = the sweep's CPU time at F* (interpolated in
        F) / the run's (F* / CPU cost when CPU time scales linearly with F); the
        speed-ups None unless ``within``, the CPU ones None without CPU times;
        ``change_at_equal_cpu_pts``, the run's accuracy minus the sweep's (monotone) at
        the run's CPU time, in points: the comparison at equal time (None when the run's
        CPU time lies outside the sweep's); ``sweep``, the monotone ``[F, accuracy]`` curve.
    """
    sweep = sorted(sweep_records, key=lambda r: r["sweep_fraction"])
    points = [[r["sweep_fraction"], r["final_test_accuracy"]] for r in sweep]
    f_star, status = equal_fraction(points, record["final_test_accuracy"])
    backward = measured_fraction(record)
    cpu = record.get("train_cpu_s") or None  # None: not recorded
    sweep_cpu = [r.get("train_cpu_s") or None for r in sweep]
    full_cpu = sweep_cpu[-1] if sweep[-1]["sweep_fraction"] == 1 else None
    cpu_known = cpu is not None and None not in sweep_cpu
    within = status == "within"
    return {
        "f_star": f_star,
        "status": status,
        "backward_cost": backward,
        "cpu_cost": cpu / full_cpu if cpu is not None and full_cpu is not None else None,
        "speedup_backward": f_star / backward if within and backward > 0 else None,
        "speedup_cpu": (
            _interpolate([p[0] for p in points], sweep_cpu, f_star) / cpu
            if within and cpu_known
            else None
        ),
        "change_at_equal_cpu_pts": (
            _change_at_cpu(monotone(points), sweep_cpu, cpu, record["final_test_accuracy"])
            if cpu_known
            else None
        ),
        "sweep": monotone(points),
    }


def _change_at_cpu(
    curve: Sequence[Sequence[float]], sweep_cpu: Sequence[float], cpu: float, accuracy: float
) -> float | None:
    """``accuracy`` minus the curve's accuracy at CPU time ``cpu`` (interpolated between
    the sweep's points by their CPU times), in points; None outside the sweep's times."""
    times = list(sweep_cpu)
    if not min(times) <= cpu <= max(times) or times != sorted(times):
        return None
    return 100 * (accuracy - _interpolate(times, [a for _, a in curve], cpu))


def add_equal_accuracy(
    record: dict[str, Any], records: Sequence[Mapping[str, Any]], bench: Bench
) -> None:
    """As a run of ``bench`` finishes: mark a sweep point's ``record`` with its
    ``sweep_fraction`` F, or add to a method's its ``equal_accuracy``
    (:func:`equal_accuracy`) once its seed's sweep is among ``records``. Other
    full-data runs (budget-matched baselines) get neither."""
    if not bench.frontier:
        return
    run = next(r for r in bench.runs if r.label == record["method"])
    sweep = sweep_of(bench.runs, bench.frontier, run)
    for fraction, label in sweep.items():
        if label == run.label:
            record["sweep_fraction"] = fraction
            return
    if run.sampler.method.name == "full" and run.selector is None:
        return
    done = {r["method"]: r for r in records if r["seed"] == record["seed"]}
    if sweep and all(label in done for label in sweep.values()):
        record["equal_accuracy"] = equal_accuracy(record, [done[s] for s in sweep.values()])


def _interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """``ys`` at ``x``, linear between the points of ascending ``xs`` (x within them)."""
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1) if len(xs) > 1 else 0
    if i == 0 or xs[i] == xs[i - 1]:
        return ys[i]
    return ys[i - 1] + (x - xs[i - 1]) / (xs[i] - xs[i - 1]) * (ys[i] - ys[i - 1])


def _one_per_optimizer(runs: Sequence[RunSpec]) -> list[RunSpec]:
    """The first run of each distinct optimizer (options included), in run order."""
    seen: list[dict[str, Any]] = []
    firsts = []
    for run in runs:
        if (optimizer := run.optimizer.describe()) not in seen:
            seen.append(optimizer)
            firsts.append(run)
    return firsts


def _plain_full(label: str) -> str:
    """``full/budget=1+adam`` -> ``full+adam``: the label full data has when listed."""
    return "full" + label.removeprefix("full/budget=1")
