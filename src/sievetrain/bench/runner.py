"""Runs methods x seeds interleaved, one finished run at a time into results.jsonl.

Finished work is never lost: each finished run is appended atomically, each run in
progress checkpoints atomically after every epoch, and ``resume=True`` skips the
finished runs and continues the one that was interrupted from its last epoch.

An output folder holds one bench; :mod:`sievetrain.bench.output` checks that running
one there overwrites nothing.

Under a process group (``torchrun``) every rank runs the same bench in the same order
and trains its share of each run; rank 0 alone checks, reads and writes the folder,
and hands what it read (finished records, a checkpoint to resume) to the others.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from sievetrain.bench.frontier import add_equal_accuracy
from sievetrain.bench.matched import compare_seed, resolve_measured
from sievetrain.bench.output import (
    CHECKPOINTS,
    MANIFEST,
    OUTPUTS,
    RESULTS,
    check_output,
    describe_bench,
    run_key,
)
from sievetrain.bench.registry import RunSpec
from sievetrain.bench.spec import Bench, prepare, run_context
from sievetrain.distributed import broadcast_object, is_main
from sievetrain.files import (
    CheckpointError,
    append_jsonl,
    atomic_torch_save,
    atomic_write_text,
    load_torch,
    remove_temporaries,
)
from sievetrain.models import build_model
from sievetrain.rng import derive_seed
from sievetrain.train import Trainer, environment

__all__ = ["Bench", "build_trainer", "prepare", "run_bench", "run_one"]


def build_trainer(
    bench: Bench, run: RunSpec, seed: int, *, progress: bool | str = False
) -> Trainer:
    """The trainer of one (method, seed), before any training."""
    data, config = bench.data, bench.config
    with torch.random.fork_rng(devices=[]):
        # Model init from an owned seed, leaving the caller's global RNG untouched.
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_model(bench.model, num_classes=data.num_classes, input_shape=data.input_shape)
    model = model.to(config.device)
    context = run_context(data, config, seed=seed, model=model)
    return Trainer(
        model,
        run.optimizer.build(context),
        data.train,
        data.test,
        config=config,
        sampler=run.sampler.build(context),
        selector=run.selector.build(context) if run.selector is not None else None,
        flags=data.flags,  # a data regime's: the run's selection audit counts them
        seed=seed,
        progress=progress,
    )


def run_one(
    bench: Bench,
    run: RunSpec,
    seed: int,
    *,
    checkpoint: Path | None = None,
    progress: bool | str = False,
    on_start: Callable[[int], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one (method, seed) and return its result record.

    With ``checkpoint``, the trainer's state is written there atomically after every
    epoch, and a checkpoint already there is resumed from when it belongs to this
    run. One that cannot be loaded safely (it would run code, is truncated or is no
    torch file; nothing in it is executed) or does not fit is moved aside to
    ``NAME.damaged``, and one of another run is left alone; either way a warning
    names it and the run starts afresh. ``on_start`` gets the number of epochs
    already done, ``on_epoch`` each epoch's history entry.
    """
    trainer = build_trainer(bench, run, seed, progress=progress)
    key = run_key(bench, run, seed)
    state = broadcast_object(_saved_state(checkpoint, key, f"{run.label}, seed {seed}"))
    if state is not None:
        try:
            trainer.load_state_dict(state)
        except Exception as error:  # right run, wrong contents: damaged
            if is_main():
                _quarantine(checkpoint, f"{str(checkpoint)!r} does not fit this run: {error}")
            trainer = build_trainer(bench, run, seed, progress=progress)
    if on_start is not None:
        on_start(trainer.epoch)

    def save(t: Trainer) -> None:
        if checkpoint is not None:
            state = t.state_dict()  # on every rank: some samplers merge ranks' state here
            if is_main():
                atomic_torch_save({"run_key": key, "trainer": state}, checkpoint)

    def after_epoch(t: Trainer) -> None:
        save(t)
        if on_epoch is not None:
            on_epoch(t.history[-1])

    # A reference model's epochs (RHO-LOSS) are checkpointed too: a run stopped among
    # them resumes there.
    summary = trainer.fit(on_epoch_end=after_epoch, on_reference_epoch=save)
    data, config = bench.data, bench.config
    return {
        "run_key": key,
        "method": run.label,
        "seed": seed,
        "dataset": data.name,
        "model": bench.model,
        "epochs": config.epochs,
        "train_size": len(data.train),
        "test_size": len(data.test),
        **({"regimes": dict(data.regimes)} if data.regimes else {}),
        **summary.to_dict(),
        "config": {"train": config.to_dict(), "methods": run.describe()},
        "environment": environment(),
    }


def _saved_state(checkpoint: Path | None, key: str, run: str) -> dict[str, Any] | None:
    """The trainer state in ``checkpoint`` if it is this run's (rank 0 reads; others get
    None). A damaged one is moved aside, another run's left alone, each with a warning."""
    if checkpoint is None or not is_main() or not checkpoint.exists():
        return None
    try:
        state = load_torch(checkpoint)
    except CheckpointError as error:
        _quarantine(checkpoint, str(error))
        return None
    if isinstance(state, dict) and state.get("run_key") == key and "trainer" in state:
        return state["trainer"]
    warnings.warn(
        f"{str(checkpoint)!r} is not a checkpoint of this run ({run}): ignored, "
        "the run starts afresh",
        stacklevel=3,
    )
    return None


def run_bench(
    bench: Bench,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = False,
    on_start: Callable[[RunSpec, int, int], None] | None = None,
    on_epoch: Callable[[RunSpec, int, dict[str, Any]], None] | None = None,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every (seed, method) not finished yet, seed-major so that the methods of
    one seed run side by side; returns all records of this bench in ``out``.

    ``out`` is checked by :func:`check_output` and created only then. Callbacks:
    ``on_start(run, seed, epochs_done)`` as a run starts or resumes,
    ``on_epoch(run, seed, entry)`` after each epoch, ``on_run(record)`` as it ends.
    """
    environment()  # pins the source revision the records name to the code loaded now
    checkpoints = out / CHECKPOINTS
    finished = broadcast_object(_open_output(out, bench, resume) if is_main() else None)
    done = {r["run_key"]: r for r in finished}
    bench = resolve_measured(bench, finished)
    records: list[dict[str, Any]] = []
    try:
        for seed in bench.seeds:
            position = 0
            while position < len(bench.runs):  # a measured match adds its baseline
                run = bench.runs[position]
                position += 1
                key = run_key(bench, run, seed)
                ckpt = checkpoints / f"{_slug(run.label)}-seed{seed}-{key}.pt"
                if key in done:  # its checkpoint outlived it when a crash came in between
                    if is_main():
                        ckpt.unlink(missing_ok=True)
                    records.append(done[key])
                    continue
                if is_main():
                    checkpoints.mkdir(exist_ok=True)
                record = run_one(
                    bench,
                    run,
                    seed,
                    checkpoint=ckpt,
                    progress=f"{run.label} seed {seed}" if progress else False,
                    on_start=None if on_start is None else partial(on_start, run, seed),
                    on_epoch=None if on_epoch is None else partial(on_epoch, run, seed),
                )
                bench = resolve_measured(bench, [*records, record])
                compare_seed(record, records, bench.matches)
                add_equal_accuracy(record, records, bench)
                if is_main():
                    append_jsonl(out / RESULTS, record)
                    ckpt.unlink(missing_ok=True)
                records.append(record)
                if on_run is not None:
                    on_run(record)
    finally:
        if is_main() and checkpoints.is_dir() and not any(checkpoints.iterdir()):
            checkpoints.rmdir()
    return records


def _open_output(out: Path, bench: Bench, resume: bool) -> list[dict[str, Any]]:
    """Check ``out`` (see :func:`check_output`), create it with its manifest, clear what a
    killed process left half-written; returns the finished records."""
    finished = check_output(out, bench, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MANIFEST).exists():
        atomic_write_text(out / MANIFEST, json.dumps(describe_bench(bench), indent=2) + "\n")
    for name in OUTPUTS:
        remove_temporaries(out, name)  # left by a process killed mid-write
    remove_temporaries(out / CHECKPOINTS, "*.pt")
    return finished


def _quarantine(checkpoint: Path, reason: str) -> None:
    """Move a checkpoint that cannot be resumed from aside, with a warning."""
    damaged = checkpoint.with_name(checkpoint.name + ".damaged")
    os.replace(checkpoint, damaged)
    warnings.warn(f"{reason}; moved to {str(damaged)!r}, the run starts afresh", stacklevel=3)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)[:60]
