"""What the CLI tells the user while a bench runs, on stderr: a bar naming the run on a
terminal, else one line per epoch; one line per finished run, numbered on from the
runs a resume skipped; and, when interrupted, what was saved.

Standard library only at the top: the CLI imports this before torch.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BenchLog", "Saved"]


@dataclass
class Saved:
    """What a bench has saved so far, for the message of an interrupt."""

    out: Path | None = None
    finished: int = 0
    current: str | None = None  # "METHOD seed S" of the run in progress
    epochs_done: int = 0
    trained: bool = False
    reported: bool = False

    def saved(self) -> str:
        if self.out is None:
            return "nothing was written"
        if self.reported:
            return f"everything was written to {str(self.out)!r}"
        on_disk = self._records_on_disk()
        if on_disk > self.finished:  # the run in progress was written, not yet reported
            self.finished, self.current = on_disk, None
        runs = (
            f"{self.finished} finished run{'s' * (self.finished != 1)} in "
            f"{str(self.out / 'results.jsonl')!r}"
            if self.finished
            else "no run had finished"
        )
        if self.trained:
            return f"{runs}; the report was not written: --resume writes it"
        if self.current is None:
            return f"{runs}; --resume --out {shlex.quote(str(self.out))} continues"
        progress = (
            f"{self.current} was saved after epoch {self.epochs_done}"
            if self.epochs_done
            else f"{self.current} had finished no epoch"
        )
        return f"{runs}; {progress}; --resume --out {shlex.quote(str(self.out))} continues"

    def _records_on_disk(self) -> int:
        from sievetrain.files import read_jsonl

        try:
            return len(read_jsonl(self.out / "results.jsonl"))
        except (OSError, ValueError):
            return self.finished


class BenchLog:
    """Progress on stderr: a bar naming the run on a terminal, else one line per
    epoch; one line per finished run, numbered on from the runs a resume skipped."""

    def __init__(self, state: Saved, args: argparse.Namespace, total: int, done: int) -> None:
        self.state, self.total, self.count = state, total, done
        self.quiet = args.quiet
        self.interactive = not args.quiet and sys.stderr.isatty()
        # A single run (train) prints its epochs on a terminal too.
        self.epoch_lines = not args.quiet and (not self.interactive or args.command == "train")

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def skipped(self, out: Path, done: list[dict[str, Any]]) -> None:
        names = ", ".join(f"{r['method']} seed {r['seed']}" for r in done)
        self._print(
            f"resuming {str(out)!r}: {len(done)} of {self.total} runs finished, skipped ({names})"
        )

    def start(self, run: Any, seed: int, epochs_done: int) -> None:
        self.state.current, self.state.epochs_done = f"{run.label} seed {seed}", epochs_done
        if epochs_done:
            self._print(f"{run.label} seed {seed}: resuming after epoch {epochs_done}")

    def epoch(self, run: Any, seed: int, h: dict[str, Any]) -> None:
        self.state.epochs_done = h["epoch"]
        if self.epoch_lines:
            loss = "skipped" if h["train_loss"] is None else f"{h['train_loss']:.4f}"
            self._print(
                f"{run.label} seed {seed} · epoch {h['epoch']}: test accuracy "
                f"{100 * h['test_accuracy']:.2f}%, entropy {h['test_entropy']:.3f}, "
                f"train loss {loss}, train {h['train_time_s']:.1f} s, "
                f"coverage {100 * h['coverage']:.1f}%"
            )

    def run(self, r: dict[str, Any]) -> None:
        self.count += 1
        self.state.finished, self.state.current = self.state.finished + 1, None
        self._print(
            f"[{self.count}/{self.total}] {r['method']} seed {r['seed']}: test accuracy "
            f"{100 * r['final_test_accuracy']:.2f}%, train {r['train_time_s']:.1f} s "
            f"(eval {r['eval_time_s']:.1f} s)"
        )
