"""A bench, resolved and validated before any training: data, model, training
config, runs (with their budget-matched baselines and full-data sweep) and seeds.

:func:`prepare` turns what a user wrote (method texts, seeds, ``--set`` values) into
a :class:`Bench`, so that bad input fails in a second, not after an hour of runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import sievetrain.bench.methods  # noqa: F401  (registers the built-in methods)
from sievetrain.bench.frontier import add_frontier, sweep_fractions
from sievetrain.bench.matched import Match, add_matched
from sievetrain.bench.registry import RunSpec, parse_run
from sievetrain.data import DataSplit
from sievetrain.distributed import world
from sievetrain.models import DEFAULT_MODEL, build_model, check_model
from sievetrain.options import ArgumentError, RunContext, naming
from sievetrain.train import TrainConfig

__all__ = ["Bench", "prepare", "run_context"]


@dataclass(frozen=True)
class Bench:
    """A resolved benchmark: data, model, training config, runs and seeds, and each
    method's budget-matched baseline (``matches``, by run label; see
    :mod:`sievetrain.bench.matched`), the ranks every run trains on
    (``world_size``, from the process group ``prepare`` runs in), and the budgets F of
    its full-data sweep (``frontier``, ascending, 1 included; empty: no sweep; see
    :mod:`sievetrain.bench.frontier`)."""

    data: DataSplit
    model: str
    config: TrainConfig
    runs: tuple[RunSpec, ...]
    seeds: tuple[int, ...]
    matches: Mapping[str, Match] = field(default_factory=dict)
    world_size: int = 1
    frontier: tuple[float, ...] = ()


def prepare(
    data: DataSplit,
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    model: str | None = None,
    config: TrainConfig = TrainConfig(),
    sets: Mapping[str, Any] | None = None,
    optimizer: str | None = None,
    matched: bool = False,
    frontier: Sequence[float] | None = None,
) -> Bench:
    """Resolve and validate everything before any training starts, so that bad
    input fails in a second, not after an hour of runs.

    Validation builds no training component: options are checked by their
    dataclasses, against the run by ``Options.check`` (dataset and batch size);
    the one check that needs a model (an early exit that fits) gets one model,
    built once.

    ``sets`` map ``KEY`` (or ``NAME/KEY``) to a value, written as text or typed: training-config
    fields, or options of the methods, applied to every run whose methods have them.
    ``optimizer`` is the optimizer-level method of runs that name none (default sgd).
    ``matched`` adds each method's budget-matched full-data baseline
    (:func:`~sievetrain.bench.matched.add_matched`), one per distinct fraction.
    ``frontier`` lists budgets F in (0, 1]: full data trained for each (and for F = 1,
    the reference of the speed-ups), run first, so that each method gets its speed-up
    at equal accuracy (:func:`~sievetrain.bench.frontier.add_frontier`).
    """
    _check_lists(data, methods, seeds)
    fractions = sweep_fractions(frontier) if frontier else ()
    config, runs = _parse_runs(methods, dict(sets or {}), config, optimizer)
    world_size = world()[0]
    if config.batch_size % world_size:
        raise ArgumentError(
            f"{{batch_size}} {config.batch_size} is the global batch and must be a multiple "
            f"of the {world_size} ranks",
            batch_size="batch_size=",
        )
    model = model or DEFAULT_MODEL[data.name]
    check_model(model, num_classes=data.num_classes, input_shape=data.input_shape)
    matches: dict[str, Match] = {}
    if matched:
        runs, matches = add_matched(runs, run_context(data, config))
    if fractions:
        runs = add_frontier(runs, fractions)
    _check_runs(runs, data, config, model)
    seeds = tuple(int(s) for s in seeds)
    return Bench(data, model, config, runs, seeds, matches, world_size, fractions)


def _check_lists(data: DataSplit, methods: Sequence[str], seeds: Sequence[int]) -> None:
    if not seeds:
        raise ArgumentError("no seeds given: pass at least one seed in {seeds}", seeds="seeds=")
    if not methods:
        raise ArgumentError("no methods given: pass at least one in {methods}", methods="methods=")
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise ArgumentError(
            f"{{seeds}} lists seed {', '.join(map(str, repeated))} more than once: "
            "each seed is one run per method",
            seeds="seeds",
        )
    if len(data.train) == 0:
        raise ValueError(f"dataset {data.name!r} has no training samples")


def _parse_runs(
    methods: Sequence[str], sets: dict[str, Any], config: TrainConfig, optimizer: str | None
) -> tuple[TrainConfig, tuple[RunSpec, ...]]:
    """The training config with its ``sets`` applied, and the runs with theirs."""
    fields = {info.name: info for info in TrainConfig.describe()}
    config = config.replace(**{k: TrainConfig.parse(k, v) for k, v in sets.items() if k in fields})
    method_sets = {k: v for k, v in sets.items() if k not in fields}
    defaults = {"optimizer": optimizer} if optimizer is not None else None
    runs = tuple(parse_run(m, method_sets, defaults) for m in methods)
    for key in method_sets:
        if not any(c.settable(key) for run in runs for c in run.components()):
            known = sorted(
                {*fields, *(o for run in runs for c in run.components() for o in c.method.exposed)}
            )
            raise ArgumentError(
                f"{{sets}} {key}: no run has an option {key!r}; known: {', '.join(known)}",
                sets="sets:",
            )
    if len({r.label for r in runs}) != len(runs):
        raise ValueError(f"a method is listed twice in {list(methods)}")
    return config, runs


def _check_runs(runs: Sequence[RunSpec], data: DataSplit, config: TrainConfig, model: str) -> None:
    """Every run's options against the data and config (one model built, if a check needs it)."""
    context = run_context(data, config)
    for run in runs:  # a sampler whose epoch lengths only a run can tell (InfoBatch)
        unknown = run.sampler.options.backprop_fraction(context) is None
        if config.schedule_unit == "step" and unknown:
            raise ArgumentError(
                f"{{sets}} schedule_unit=step needs every epoch's length up front, and "
                f"{run.label!r} prunes by the losses: use schedule_unit=epoch",
                sets="sets:",
            )
    if any(c.options.needs_model for run in runs for c in run.components()):
        with torch.random.fork_rng(devices=[]):
            net = build_model(model, num_classes=data.num_classes, input_shape=data.input_shape)
        # Two samples: batch norm in training mode needs more than one.
        context = run_context(data, config, model=net, sample=data.train[:2])
    for run in runs:
        with naming(run.label):
            for component in run.components():
                component.options.check(context)


def run_context(data: DataSplit, config: TrainConfig, **run: Any) -> RunContext:
    """What the methods of a run on ``data`` with ``config`` need to be checked or built."""
    return RunContext(
        n=len(data.train),
        batch_size=config.batch_size,
        epochs=config.epochs,
        num_classes=data.num_classes,
        input_shape=tuple(data.input_shape),
        flags=data.flags,
        **run,
    )
