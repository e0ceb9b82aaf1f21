"""Runs methods x seeds interleaved, one finished run at a time into results.jsonl.

Finished work is never lost: each finished run is appended atomically, each run in
progress checkpoints atomically after every epoch, and ``resume=True`` skips the
finished runs and continues the one that was interrupted from its last epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import sievetrain.bench.methods  # noqa: F401  (registers the built-in methods)
from sievetrain._io import append_jsonl, atomic_torch_save, read_jsonl
from sievetrain._rng import derive_seed
from sievetrain.bench.registry import RunSpec, parse_run, parse_value
from sievetrain.data import DataSplit
from sievetrain.models import DEFAULT_MODEL, build_model
from sievetrain.train import TrainConfig, Trainer, environment

__all__ = ["Bench", "check_output", "prepare", "run_one", "run_bench", "RESULTS"]

RESULTS = "results.jsonl"
CONFIG_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


@dataclass(frozen=True)
class Bench:
    """A resolved benchmark: data, model, training config, runs and seeds."""

    data: DataSplit
    model: str
    config: TrainConfig
    runs: tuple[RunSpec, ...]
    seeds: tuple[int, ...]


def prepare(
    data: DataSplit,
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    model: str | None = None,
    config: TrainConfig = TrainConfig(),
    sets: Mapping[str, str] | None = None,
    optimizer: str | None = None,
) -> Bench:
    """Resolve and validate everything before any training starts, so that bad
    input fails in a second, not after an hour of runs.

    ``sets`` are ``--set KEY=VALUE`` overrides: training-config fields, or options
    (or knobs) of the methods, applied to every run whose methods have them.
    ``optimizer`` is the optimizer-level method of runs that name none (default sgd).
    """
    if not seeds:
        raise ValueError("no seeds given: pass at least one, e.g. --seeds 0")
    if not methods:
        raise ValueError("no methods given")
    if len(data.train) == 0:
        raise ValueError(f"dataset {data.name!r} has no training samples")
    sets = dict(sets or {})
    config = config.replace(
        **{k: parse_value(v, getattr(config, k), k) for k, v in sets.items() if k in CONFIG_KEYS}
    )
    method_sets = {k: v for k, v in sets.items() if k not in CONFIG_KEYS}
    defaults = {"optimizer": optimizer} if optimizer is not None else None
    runs = tuple(parse_run(m, method_sets, defaults) for m in methods)
    settable = {
        key
        for run in runs
        for c in run.components()
        for key in (*c.method.options, *([c.method.knob] if c.method.knob else []))
    }
    for key in method_sets:
        if key not in settable:
            known = sorted(CONFIG_KEYS | settable)
            raise ValueError(
                f"--set {key}: no run has an option {key!r}; known: {', '.join(known)}"
            )
    if len({r.label for r in runs}) != len(runs):
        raise ValueError(f"a method is listed twice in {list(methods)}")
    model = model or DEFAULT_MODEL[data.name]
    with torch.random.fork_rng(devices=[]):
        net = build_model(model, num_classes=data.num_classes, input_shape=data.input_shape)
    probe = [torch.nn.Parameter(torch.zeros(1))]
    x, y = data.train[:2]  # two samples: batch norm in training mode needs more than one
    for run in runs:  # building once validates ratios, subset sizes and optimizer options
        run.sampler.build(
            n=len(data.train), seed=0, batch_size=config.batch_size, epochs=config.epochs
        )
        run.optimizer.build(params=probe, seed=0)
        if run.selector is not None:  # one selection on a throwaway model checks exits
            run.selector.build(seed=0, num_classes=data.num_classes).select(net, x, y)
    return Bench(data, model, config, runs, tuple(int(s) for s in seeds))


def run_key(bench: Bench, run: RunSpec, seed: int) -> str:
    """Identity of a run: same key, same computation."""
    blob = json.dumps(
        [
            bench.data.name,
            len(bench.data.train),
            len(bench.data.test),
            bench.model,
            bench.config.to_dict(),
            run.describe(),
            seed,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_one(
    bench: Bench,
    run: RunSpec,
    seed: int,
    *,
    checkpoint: Path | None = None,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one (method, seed) and return its result record."""
    data, config = bench.data, bench.config
    with torch.random.fork_rng(devices=[]):
        # Model init from an owned seed, leaving the caller's global RNG untouched.
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_model(bench.model, num_classes=data.num_classes, input_shape=data.input_shape)
    model = model.to(config.device)
    trainer = Trainer(
        model,
        run.optimizer.build(params=model.parameters(), seed=seed),
        data.train,
        data.test,
        config=config,
        sampler=run.sampler.build(
            n=len(data.train), seed=seed, batch_size=config.batch_size, epochs=config.epochs
        ),
        selector=(
            run.selector.build(seed=seed, num_classes=data.num_classes)
            if run.selector is not None
            else None
        ),
        seed=seed,
        progress=progress,
    )
    key = run_key(bench, run, seed)
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state.get("run_key") == key:
            trainer.load_state_dict(state["trainer"])

    def after_epoch(t: Trainer) -> None:
        if checkpoint is not None:
            atomic_torch_save({"run_key": key, "trainer": t.state_dict()}, checkpoint)
        if on_epoch is not None:
            on_epoch(t.history[-1])

    summary = trainer.fit(on_epoch_end=after_epoch)
    return {
        "run_key": key,
        "method": run.label,
        "seed": seed,
        "dataset": data.name,
        "model": bench.model,
        "epochs": config.epochs,
        "train_size": len(data.train),
        "test_size": len(data.test),
        **summary,
        "config": {"train": config.to_dict(), "methods": run.describe()},
        "environment": environment(),
    }


def run_bench(
    bench: Bench,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = False,
    on_run: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every (seed, method) not finished yet, seed-major so that the methods of
    one seed run side by side; returns all records of this bench in ``out``."""
    results = out / RESULTS
    done = {r["run_key"]: r for r in check_output(out, resume=resume)}
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    records = []
    for seed in bench.seeds:
        for run in bench.runs:
            key = run_key(bench, run, seed)
            if key in done:
                records.append(done[key])
                continue
            ckpt = checkpoints / f"{_slug(run.label)}-seed{seed}-{key}.pt"
            if not resume:
                ckpt.unlink(missing_ok=True)
            record = run_one(
                bench, run, seed, checkpoint=ckpt, progress=progress, on_epoch=on_epoch
            )
            append_jsonl(results, record)
            ckpt.unlink(missing_ok=True)
            records.append(record)
            if on_run is not None:
                on_run(record)
    return records


def check_output(out: Path, *, resume: bool) -> list[dict[str, Any]]:
    """Finished records in ``out``; refuses to mix a new bench into old results."""
    done = read_jsonl(out / RESULTS)
    if done and not resume:
        raise ValueError(
            f"{str(out)!r} already holds results of {len(done)} runs: pass --resume to "
            "continue them, or choose another output directory"
        )
    return done


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)[:60]
