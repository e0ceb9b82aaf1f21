"""The command line: ``sievetrain train``, ``sievetrain bench``, ``sievetrain methods``.

Bad input ends with a one-line message on stderr and exit code 2, before any
training starts; results are written as runs finish, so an interrupted bench
loses at most the epoch in progress (``--resume`` continues it).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from sievetrain.bench import RESULTS, prepare, run_bench, write_report
from sievetrain.bench.cards import methods_listing, write_cards
from sievetrain.data import DATASETS, load_dataset
from sievetrain.files import CheckpointError
from sievetrain.options import ArgumentError
from sievetrain.train import TrainConfig

__all__ = ["main"]

DEFAULT_METHODS = "full,srs:0.1,srs:0.3,srs:0.5,fixed:0.3"
DEFAULT_EPOCHS = {"mnist1d": 20, "fashion-mnist": 10, "shakespeare": 5}
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
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.command == "methods":
        if args.write_cards is not None:
            for path in write_cards(args.write_cards):
                print(f"updated {path}")
            return 0
        print(methods_listing(), end="")
        return 0
    try:
        bench, out = _setup(args)
    except ArgumentError as error:
        return _error(error.render(FLAGS))
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        return _error(str(error))
    log = _Log(quiet=args.quiet)
    total = len(bench.runs) * len(bench.seeds)
    count = iter(range(1, total + 1))
    try:
        records = run_bench(
            bench,
            out,
            resume=args.resume,
            progress=log.interactive,
            on_run=lambda r: log.run(next(count), total, r),
            on_epoch=log.epoch if args.command == "train" else None,
        )
    except ArgumentError as error:  # results there already, and no --resume
        return _error(error.render(FLAGS))
    except CheckpointError as error:  # checked before any training; names the file
        return _error(str(error))
    except KeyboardInterrupt:
        print(
            f"sievetrain: interrupted; finished runs are in {out / RESULTS}, "
            "the run in progress resumes from its last epoch with --resume",
            file=sys.stderr,
        )
        return 130
    table = write_report(
        out, records, command=shlex.join(["sievetrain", *argv]), target=bench.config.target_accuracy
    )
    print(table, end="")
    print(
        f"results: {out / RESULTS}\n"
        f"report:  {out / 'report.md'}\n"
        f"plots:   {out / 'accuracy_vs_time.png'}, {out / 'entropy_vs_epoch.png'}"
    )
    return 0


def _error(message: str) -> int:
    print(f"sievetrain: error: {message}", file=sys.stderr)
    return 2


def _setup(args: argparse.Namespace) -> tuple[Any, Path]:
    if args.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {args.dataset!r}; known: {', '.join(DATASETS)}")
    methods = [args.method] if args.command == "train" else _split_methods(args.methods)
    seeds = [args.seed] if args.command == "train" else _parse_seeds(args.seeds)
    sets = dict(_parse_set(s) for s in args.set)
    for flag in SHORTHANDS:  # --lr 0.01 is --set lr=0.01
        if getattr(args, flag) is not None:
            sets[flag] = getattr(args, flag)  # text: the registry parses it, once
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    config = TrainConfig(
        epochs=args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.dataset],
        batch_size=args.batch_size,
        target_accuracy=args.target_accuracy,
        device=device,
    )
    out = _writable_dir(Path(args.out))
    data = load_dataset(
        args.dataset, data_dir=args.data_dir, train_size=args.train_size, test_size=args.test_size
    )
    bench = prepare(
        data, methods, seeds, model=args.model, config=config, sets=sets, optimizer=args.optimizer
    )
    return bench, out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sievetrain", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one method with one seed")
    train.add_argument(
        "--method", default="full", help="NAME[:VALUE][/KEY=VALUE]... joined by '+' (default: full)"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default="sievetrain-train", help="output directory")
    bench = sub.add_parser("bench", help="compare methods over seeds, interleaved")
    bench.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"comma-separated methods (default: {DEFAULT_METHODS})",
    )
    bench.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    bench.add_argument("--out", default="sievetrain-bench", help="output directory")
    for p in (train, bench):
        p.add_argument("--dataset", default="mnist1d", help=f"one of {', '.join(DATASETS)}")
        p.add_argument("--model", default=None, help="reference model (default: the dataset's)")
        p.add_argument("--data-dir", default=None, help="folder with the dataset's files")
        p.add_argument("--train-size", type=int, default=None, help="training samples to use")
        p.add_argument("--test-size", type=int, default=None, help="test samples to use")
        p.add_argument(
            "--epochs",
            type=int,
            default=None,
            help=f"epochs (default per dataset: {DEFAULT_EPOCHS})",
        )
        p.add_argument("--batch-size", type=int, default=128)
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
            "NAME/KEY=VALUE (e.g. sift/ratio=0.3) when two methods of a run have KEY",
        )
        p.add_argument(
            "--target-accuracy",
            type=float,
            default=None,
            help="fraction; time to reach it is reported (default: full data's final - 1 pt)",
        )
        p.add_argument("--device", default="auto", help="torch device (default: cuda if available)")
        p.add_argument(
            "--resume", action="store_true", help="skip finished runs, continue the interrupted one"
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
    seeds = []
    for part in _split(text):
        try:
            seeds.append(int(part))
        except ValueError:
            raise ValueError(
                f"invalid seed {part!r} in --seeds {text!r}: expected integers"
            ) from None
    if not seeds:
        raise ValueError(f"no seeds in --seeds {text!r}")
    return seeds


def _parse_set(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise ValueError(f"invalid --set {text!r}: expected KEY=VALUE")
    return key.strip(), value


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".sievetrain-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(
            f"output directory {str(path)!r} is not writable: {error.strerror}"
        ) from None
    return path


class _Log:
    """Progress lines on stderr; a progress bar only on a terminal."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.interactive = not quiet and sys.stderr.isatty()

    def run(self, i: int, total: int, r: dict[str, Any]) -> None:
        if not self.quiet:
            print(
                f"[{i}/{total}] {r['method']} seed {r['seed']}: test accuracy "
                f"{100 * r['final_test_accuracy']:.2f}%, train {r['train_time_s']:.1f} s "
                f"(eval {r['eval_time_s']:.1f} s)",
                file=sys.stderr,
            )

    def epoch(self, h: dict[str, Any]) -> None:
        if not self.quiet:
            loss = "skipped" if h["train_loss"] is None else f"{h['train_loss']:.4f}"
            print(
                f"epoch {h['epoch']}: test accuracy {100 * h['test_accuracy']:.2f}%, "
                f"entropy {h['test_entropy']:.3f}, train loss {loss}, "
                f"train {h['train_time_s']:.1f} s, coverage {100 * h['coverage']:.1f}%",
                file=sys.stderr,
            )
