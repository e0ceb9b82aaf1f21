"""The command line: ``sievetrain train``, ``sievetrain bench``, ``sievetrain methods``.

Bad input ends with a one-line message on stderr and exit code 2, before any training
starts and leaving no folder behind; results are written as runs finish, so an
interrupted bench loses at most the epoch in progress (``--resume`` continues it),
and Ctrl-C at any moment exits 130 with one line saying what was saved. The output
folder is made last, and locked while the command writes it: a second bench or train
on the same folder is bad input.

Under ``torchrun --nproc_per_node=W`` every rank runs the same command: the ranks join
one process group, train each run together, and rank 0 alone writes and prints; bad
input on any rank stops every rank with exit code 2.

This module imports only the standard library at the top: the heavy imports (torch)
happen inside :func:`main`, where an interrupt is caught like any other.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sievetrain.console import BenchLog, Saved

__all__ = ["main"]

DEFAULT_METHODS = "full,srs:0.1,srs:0.3,srs:0.5,fixed:0.3"
DEFAULT_EPOCHS = {"mnist1d": 20, "fashion-mnist": 10, "shakespeare": 5, "speech-kws": 10}
# Each bench without --out gets a fresh folder: PARENT/YYYYmmdd-HHMMSS.
DEFAULT_OUT = {"train": "sievetrain-train", "bench": "sievetrain-bench"}
# Flags that set an optimizer option for every run (--lr X is --set lr=X): name -> help.
SHORTHANDS = {
    "lr": "learning rate (default: the optimizer's)",
    "weight_decay": "weight decay (default: the optimizer's)",
    "sampling_rate": "StochGradAdam's sampling rate s in (0, 1] (default: its own)",
}
# How the CLI spells the library's keyword arguments in error messages.
FLAGS = {
    "seeds": "--seeds",
    "methods": "--methods",
    "sets": "--set",
    "resume": "--resume",
    "data_dir": "--data-dir",
    "out": "--out",
    "batch_size": "--batch-size",
    "frontier": "--frontier",
    "label_noise": "--label-noise",
    "duplicates": "--duplicates",
    "long_tail": "--long-tail",
    "off_target": "--off-target",
}
# The data regimes (sievetrain.data.regimes), applied to the training split: flag -> help.
REGIME_FLAGS = {
    "label_noise": "P[/kind=confusion]: a fraction P of training labels replaced by a "
    "uniformly drawn other class (kind=symmetric), or flipped to each class's fixed partner "
    "(kind=confusion; the pairs are in the dataset's regime record)",
    "duplicates": "K[/copies=M][/jitter=J]: K training items, each repeated M times in place "
    "of others (the size stays the same); each copy shifted by up to J pixels or time steps",
    "long_tail": "R: class sizes falling exponentially from the largest to the largest/R "
    "(the test set stays balanced)",
    "off_target": "F: a fraction F of training sequences replaced by off-target text (the "
    "Python standard library's source; shakespeare only)",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    state = Saved()
    try:
        with _interrupts_deferred():
            # torch's import can abort the process or swallow an interrupt that lands
            # inside it: Ctrl-C there takes effect once the imports are done.
            import torch  # noqa: F401

            import sievetrain.bench
            import sievetrain.data  # noqa: F401
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            code = _main(argv, state)
        _leave_process_group()
        return code
    except KeyboardInterrupt:
        if _main_rank():
            print(f"sievetrain: interrupted; {state.saved()}", file=sys.stderr)
        return 130


def _main_rank() -> bool:
    """Rank 0 of a torchrun job (or the only process): the one that prints."""
    return os.environ.get("RANK", "0") == "0"


def _leave_process_group() -> None:
    """After a torchrun job's ranks have all finished (rank 0 writes last), leave the group
    together: a rank leaving while another still works would abort."""
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """SIGINT inside the block is held, and raised as KeyboardInterrupt at its end."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can handle signals
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda *_: held.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def _main(argv: list[str], state: Saved) -> int:
    args = _parser().parse_args(argv)
    if args.command == "methods":
        from sievetrain.bench.cards import methods_listing, write_cards

        if args.write_cards is not None:
            for path in write_cards(args.write_cards):
                print(f"updated {path}")
            return 0
        print(methods_listing(), end="")
        return 0
    from sievetrain.distributed import gather_objects, is_main
    from sievetrain.options import ArgumentError

    problem, lock = None, None  # lock: rank 0's on the output folder, once it is made
    try:
        try:
            args.device = _launch(args.device)  # under torchrun: joins the process group
            bench, out, done = _setup(args)
            if is_main():  # last, once all else is checked: make the folder and lock it
                lock, done = _claim(out, bench, resume=args.resume)
        except ArgumentError as error:
            problem = error.render(FLAGS)
        except (ValueError, OSError) as error:
            problem = str(error)
        problems = [p for p in gather_objects(problem) if p is not None]  # every rank stops
        if problems:
            return _error(problems[0])
        return _run(args, argv, state, bench, out, done)
    finally:
        if lock is not None:  # also on an error or Ctrl-C; a folder left empty goes too
            lock.release()


def _run(
    args: argparse.Namespace,
    argv: list[str],
    state: Saved,
    bench: Any,
    out: Path,
    done: list[dict[str, Any]],
) -> int:
    """Train the checked bench into ``out`` (rank 0 writes and prints)."""
    from sievetrain.bench import RESULTS, run_bench, write_report
    from sievetrain.bench.matched import planned_runs
    from sievetrain.distributed import broadcast_object, is_main

    out = broadcast_object(out)  # rank 0's: a dated default folder could differ by a second
    if not is_main():  # trains its share; rank 0 writes and prints
        run_bench(bench, out, resume=args.resume)
        return 0
    total = planned_runs(bench)
    log = BenchLog(state, args, total, len(done))
    if done:
        log.skipped(out, done)
    state.out, state.finished = out, len(done)
    records = run_bench(
        bench,
        out,
        resume=args.resume,
        progress=log.interactive,
        on_start=log.start,
        on_epoch=log.epoch,
        on_run=log.run,
    )
    state.trained = True
    table = write_report(
        out, records, command=shlex.join(["sievetrain", *argv]), target=bench.config.target_accuracy
    )
    state.reported = True
    print(table, end="")
    print(
        f"results: {out / RESULTS}\n"
        f"report:  {out / 'report.md'}\n"
        f"plots:   {out / 'accuracy_vs_time.png'}, {out / 'entropy_vs_epoch.png'}"
        + (f", {out / 'accuracy_vs_cpu.png'}" if bench.frontier else "")
    )
    return 0


def _error(message: str) -> int:
    if _main_rank():
        print(f"sievetrain: error: {message}", file=sys.stderr)
    return 2


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if _main_rank():
        print(f"sievetrain: warning: {message}", file=sys.stderr)


def _launch(device: str) -> str:
    """The device this process trains on; under torchrun, after joining the process
    group (``auto``: CUDA where available, each rank on its ``LOCAL_RANK``'s GPU)."""
    import torch

    from sievetrain.distributed import init_from_environment

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return init_from_environment(device)


def _setup(args: argparse.Namespace) -> tuple[Any, Path, list[dict[str, Any]]]:
    """Everything checked, nothing written: the bench, its folder and its finished runs
    (rank 0 reads the folder; the other ranks get no finished runs)."""
    from sievetrain.bench import check_output, prepare
    from sievetrain.data import DATASETS, load_dataset
    from sievetrain.distributed import is_main
    from sievetrain.train import TrainConfig

    if args.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {args.dataset!r}; known: {', '.join(DATASETS)}")
    methods = [args.method] if args.command == "train" else _split_methods(args.methods)
    seeds = [args.seed] if args.command == "train" else _parse_seeds(args.seeds)
    frontier = getattr(args, "frontier", None)
    frontier = None if frontier is None else _parse_fractions(frontier)
    sets = dict(_parse_set(s) for s in args.set)
    for flag in SHORTHANDS:  # --lr 0.01 is --set lr=0.01
        if getattr(args, flag) is not None:
            sets[flag] = getattr(args, flag)  # text: the registry parses it, once
    out = _output_folder(args)
    config = TrainConfig(
        epochs=args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.dataset],
        batch_size=args.batch_size,
        target_accuracy=args.target_accuracy,
        device=args.device,
        amp=args.amp,
        compile=args.compile,
    )
    data = load_dataset(
        args.dataset, data_dir=args.data_dir, train_size=args.train_size, test_size=args.test_size
    )
    data = _apply_regimes(data, args)
    bench = prepare(
        data,
        methods,
        seeds,
        model=args.model,
        config=config,
        sets=sets,
        optimizer=args.optimizer,
        matched=getattr(args, "matched", False),
        frontier=frontier,
    )
    done = check_output(out, bench, resume=args.resume) if is_main() else []
    return bench, out, done


def _apply_regimes(data: Any, args: argparse.Namespace) -> Any:
    """``data`` with the regimes the flags ask for applied to its training split."""
    asked = {name: getattr(args, name) for name in REGIME_FLAGS if getattr(args, name) is not None}
    if not asked:
        return data
    from sievetrain.data.regimes import apply_regimes, parse_regime

    regimes = {}
    for name, text in asked.items():
        try:
            regimes[name] = parse_regime(name, text)
        except ValueError as error:
            raise ValueError(f"{FLAGS[name]} {text!r}: {error}") from None
    return apply_regimes(data, regimes, seed=args.data_seed)


def _claim(out: Path, bench: Any, *, resume: bool) -> tuple[Any, list[dict[str, Any]]]:
    """Make ``out`` and lock it (refusing a folder another bench or train writes to); then
    its finished runs, read again under the lock. Returns the lock and the runs."""
    from sievetrain.bench import check_output
    from sievetrain.bench.output import claim_output

    lock = claim_output(out)
    try:
        return lock, check_output(out, bench, resume=resume)
    except BaseException:
        lock.release()  # and the folder, if made here: bad input leaves nothing behind
        raise


def _output_folder(args: argparse.Namespace) -> Path:
    """``--out``, or a fresh dated folder; checked to be creatable, not created."""
    if args.out is None:
        if args.resume:
            raise ValueError("--resume needs --out: the folder of the bench to continue")
        parent = Path(DEFAULT_OUT[args.command])
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out, n = parent / stamp, 1
        while out.exists():
            n += 1
            out = parent / f"{stamp}-{n}"
    else:
        out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {str(out)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"--out {str(out)!r} is not writable: no write permission on {str(existing)!r}"
        )
    return out


def _parser() -> argparse.ArgumentParser:
    from sievetrain import __version__
    from sievetrain.data import DATASETS

    parser = argparse.ArgumentParser(prog="sievetrain", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sievetrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one method with one seed")
    train.add_argument(
        "--method", default="full", help="NAME[:VALUE][/KEY=VALUE]... joined by '+' (default: full)"
    )
    train.add_argument("--seed", type=int, default=0, help="(default: 0)")
    bench = sub.add_parser("bench", help="compare methods over seeds, interleaved")
    bench.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"comma-separated methods (default: {DEFAULT_METHODS})",
    )
    bench.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    bench.add_argument(
        "--matched",
        action="store_true",
        help="add, for every method, full data trained for the same compute "
        "(full/budget=F, F = the method's fraction of backward passes; one per distinct F) "
        "and compare each method with it",
    )
    bench.add_argument(
        "--frontier",
        default=None,
        metavar="F1,F2,...",
        help="budgets F in (0, 1], e.g. 0.2,0.4,0.6,0.8,1: add full data trained for F of "
        "its optimizer steps (full/budget=F) for each F, and for F = 1 if missing, run "
        "before the methods; report each method's speed-up at equal accuracy: F*, the "
        "budget full data needs for the method's accuracy (interpolated, never "
        "extrapolated), over the method's cost in backward passes and in CPU time. The "
        "speed-ups are against full data (F = 1)",
    )
    for command, p in (("train", train), ("bench", bench)):
        p.add_argument(
            "--out",
            default=None,
            help=f"output folder, new or without a bench's files; with --resume, the folder "
            f"of the bench to continue (default: a new {DEFAULT_OUT[command]}/DATE-TIME)",
        )
        p.add_argument("--dataset", default="mnist1d", help=f"one of {', '.join(DATASETS)}")
        p.add_argument("--model", default=None, help="reference model (default: the dataset's)")
        p.add_argument(
            "--data-dir", default=None, help="folder with the dataset's files (fashion-mnist)"
        )
        p.add_argument("--train-size", type=int, default=None, help="training samples to use")
        for name, text in REGIME_FLAGS.items():
            p.add_argument("--" + name.replace("_", "-"), default=None, help=text)
        p.add_argument(
            "--data-seed",
            type=int,
            default=0,
            help="seeds the data regimes (which labels, items, samples they change) (default: 0)",
        )
        p.add_argument("--test-size", type=int, default=None, help="test samples to use")
        p.add_argument(
            "--epochs",
            type=int,
            default=None,
            help=f"epochs (default per dataset: {DEFAULT_EPOCHS})",
        )
        p.add_argument("--batch-size", type=int, default=128, help="(default: 128)")
        p.add_argument(
            "--optimizer",
            default=None,
            help="optimizer of runs that name none: sgd, adam, rmsprop or stochgradadam "
            "(default: sgd)",
        )
        for flag, text in SHORTHANDS.items():
            p.add_argument("--" + flag.replace("_", "-"), default=None, help=text)
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="set a training option or a method option for every run that has it; "
            "NAME/KEY=VALUE (e.g. sift/ratio=0.3) when two methods of a run have KEY; "
            "tuples comma-separated (milestones=0.5,0.75)",
        )
        p.add_argument(
            "--target-accuracy",
            type=float,
            default=None,
            help="fraction; time to reach it is reported (default: full data's final - 1 pt)",
        )
        p.add_argument(
            "--device", default="auto", help="torch device (default: cuda if available, else cpu)"
        )
        p.add_argument(
            "--amp",
            default="off",
            help="mixed precision of the training step: off, bf16 or fp16 (fp16 scales the "
            "loss) (default: off)",
        )
        p.add_argument(
            "--compile",
            action="store_true",
            help="torch.compile the training step; compiled in the untimed warm-up",
        )
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue the bench in --out: skip finished runs, continue the interrupted one",
        )
        p.add_argument("--quiet", action="store_true", help="print only the final table")
    methods = sub.add_parser(
        "methods", help="list the registered methods and every option with its default"
    )
    methods.add_argument(
        "--write-cards",
        metavar="DIR",
        default=None,
        help="rewrite the generated option tables of the method cards in DIR",
    )
    return parser


def _split(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _split_methods(text: str) -> list[str]:
    """Methods are comma-separated; a comma followed by a number continues a
    tuple value (``adam/betas=0.9,0.99``), since no method name starts with one."""
    return [m.strip() for m in re.split(r",(?![\s]*[-+.\d])", text) if m.strip()]


def _parse_seeds(text: str) -> list[int]:
    return _parse_list(text, int, "--seeds", "seed", "integers")


def _parse_fractions(text: str) -> list[float]:
    return _parse_list(text, float, "--frontier", "budget", "numbers in (0, 1]")


def _parse_list(text: str, kind: type, flag: str, item: str, expected: str) -> list:
    """The comma-separated values of ``flag``, each of type ``kind``."""
    values = []
    for part in _split(text):
        try:
            values.append(kind(part))
        except ValueError:
            raise ValueError(
                f"invalid {item} {part!r} in {flag} {text!r}: expected {expected}"
            ) from None
    if not values:
        raise ValueError(f"no {item}s in {flag} {text!r}")
    return values


def _parse_set(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise ValueError(f"invalid --set {text!r}: expected KEY=VALUE")
    return key.strip(), value
