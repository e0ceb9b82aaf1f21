"""A bench's output folder: what it holds, and the check that running a bench there
overwrites nothing.

An output folder holds one bench: ``bench.json`` records what it is (data, model,
training config, methods, seeds). A new bench refuses a folder that already holds
a bench's files, and a resumed one a folder of another bench, naming what differs;
so no command overwrites results, a report or a plot it did not write for the same
bench. Files of the user's own in the folder are never touched. While a bench writes a
folder it holds its lock (:func:`claim_output`): a second one is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sievetrain.bench.matched import resolve_measured
from sievetrain.bench.registry import RunSpec
from sievetrain.bench.report import REPORT_FILES
from sievetrain.files import FolderInUse, FolderLock, read_jsonl
from sievetrain.options import ArgumentError

if TYPE_CHECKING:
    from sievetrain.bench.spec import Bench

__all__ = [
    "CHECKPOINTS",
    "MANIFEST",
    "OUTPUTS",
    "RESULTS",
    "check_output",
    "claim_output",
    "describe_bench",
    "run_key",
]

RESULTS = "results.jsonl"
MANIFEST = "bench.json"
CHECKPOINTS = "checkpoints"
# Everything a bench writes into its output folder.
OUTPUTS = (MANIFEST, RESULTS, *REPORT_FILES, CHECKPOINTS)
# Keys every result record has (what the report reads).
RECORD_KEYS = (
    "run_key",
    "method",
    "seed",
    "epochs",
    "train_size",
    "final_test_accuracy",
    "train_time_s",
    "samples_backpropagated",
    "history",
)


# Options added after run keys were first written, with the value that computes what
# runs before them computed: at that value they stay out of the key, so a bench folder
# written before them still resumes.
ADDED_LATER = {"amp": "off", "compile": False, "amsgrad": False, "maximize": False}


def _keyed(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (nested dicts too) without the later options at their old value."""
    return {
        name: _keyed(value) if isinstance(value, dict) else value
        for name, value in options.items()
        if not (name in ADDED_LATER and value == ADDED_LATER[name])
    }


def run_key(bench: Bench, run: RunSpec, seed: int) -> str:
    """Identity of a run: same key, same computation."""
    blob = json.dumps(
        [
            bench.data.name,
            len(bench.data.train),
            len(bench.data.test),
            bench.model,
            _keyed(bench.config.to_dict()),
            _keyed(run.describe()),
            seed,
            # a bench on W > 1 ranks is another computation; one process keeps its keys
            *([{"world_size": bench.world_size}] if bench.world_size > 1 else []),
            # so is one on data a regime changed; clean data keeps its keys
            *([{"regimes": bench.data.regimes}] if bench.data.regimes else []),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def describe_bench(bench: Bench) -> dict[str, Any]:
    """What a bench is, as plain JSON: the identity ``bench.json`` records."""
    return {
        "dataset": bench.data.name,
        "train_size": len(bench.data.train),
        "test_size": len(bench.data.test),
        **({"regimes": dict(bench.data.regimes)} if bench.data.regimes else {}),
        "model": bench.model,
        "train": bench.config.to_dict(),
        "methods": [run.label for run in bench.runs],
        "resolved": {run.label: run.describe() for run in bench.runs},
        "seeds": list(bench.seeds),
        "matched": {label: match.to_dict() for label, match in bench.matches.items()},
        **({"world_size": bench.world_size} if bench.world_size > 1 else {}),
        **({"frontier": list(bench.frontier)} if bench.frontier else {}),
    }


def check_output(out: Path, bench: Bench, *, resume: bool) -> list[dict[str, Any]]:
    """The finished records of ``bench`` in ``out``, after checking that running
    ``bench`` there overwrites nothing; reads only, creates nothing.

    Without ``resume``, ``out`` must hold none of a bench's files (other files are
    fine and left alone). With ``resume``, a folder that holds them must be this
    bench's (its ``bench.json`` equal to :func:`describe_bench`), and every line of
    its ``results.jsonl`` a record of one of its runs.

    Raises:
        ArgumentError: ``out`` is a file; it holds output and ``resume`` is False; or
            it holds another bench's output (naming what differs).
        ValueError: naming the file (and line) of a damaged ``bench.json`` or
            ``results.jsonl``.
    """
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{{out}} {str(out)!r} is a file, not a folder", out="out=")
    present = [name for name in OUTPUTS if (out / name).exists()]
    if not present:
        return []
    if not resume:
        raise ArgumentError(
            f"{{out}} {str(out)!r} already holds a bench's output ({', '.join(present)}): "
            "pass {resume} to continue that bench, or choose another folder; "
            "nothing there was changed",
            out="out=",
            resume="resume=True",
        )
    manifest = out / MANIFEST
    if not manifest.exists():
        raise ArgumentError(
            f"{{resume}}: {str(out)!r} holds {', '.join(present)} but no {MANIFEST}, so "
            "which bench it holds is unknown; choose another folder",
            resume="resume=True",
        )
    try:
        there = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(manifest)!r} is damaged: {error}") from None
    here = json.loads(json.dumps(describe_bench(bench)))  # tuples as JSON lists
    differences = _differences(there, here) if isinstance(there, dict) else ["everything"]
    if differences:
        raise ArgumentError(
            f"{{resume}}: {str(out)!r} holds another bench; {'; '.join(differences)}. "
            "Resume with the same data, model, methods, seeds and training options, "
            "or choose another folder",
            resume="resume=True",
        )
    records = read_jsonl(out / RESULTS)
    for number, record in enumerate(records, 1):
        if missing := [k for k in RECORD_KEYS if k not in record]:
            _damaged(out, number, f"lacks {', '.join(missing)}")
    bench = resolve_measured(bench, records)  # the baselines of measured matches
    keys = {run_key(bench, run, seed) for seed in bench.seeds for run in bench.runs}
    for number, record in enumerate(records, 1):
        if record["run_key"] not in keys:
            _damaged(out, number, "is no run of this bench")
    return records


def claim_output(out: Path) -> FolderLock:
    """Create ``out`` (and its missing parents) and lock it for this process (see
    :class:`~sievetrain.files.FolderLock`), so that no second bench writes there while
    this one runs; a lock left by a process that has ended is taken over, with a warning.
    ``release()`` the lock at the end: it also removes the folders made here, if nothing
    was written in them.

    Raises:
        ArgumentError: naming ``out``: it cannot be created (saying why), or another
            process holds it (naming its pid and host).
    """
    try:
        return FolderLock(out).acquire()
    except FolderInUse as error:
        raise ArgumentError(f"{{out}} {error}", out="out=") from None
    except OSError as error:
        what = "cannot be created" if not out.is_dir() else "cannot be written"
        why = error.strerror or str(error)
        where = f": {str(error.filename)!r}" if error.filename is not None else ""
        raise ArgumentError(f"{{out}} {str(out)!r} {what}: {why}{where}", out="out=") from None


def _damaged(out: Path, number: int, why: str) -> None:
    raise ValueError(f"{str(out / RESULTS)!r} record {number} {why}: fix or remove that line")


def _differences(there: dict[str, Any], here: dict[str, Any], prefix: str = "") -> list[str]:
    """``KEY: X there, Y here`` for each entry that differs (nested dicts by key)."""
    found = []
    for key in dict.fromkeys([*there, *here]):
        a, b = there.get(key), here.get(key)
        if a == b or (key == "resolved" and there.get("methods") != here.get("methods")):
            continue  # resolved options matter only when the method labels agree
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        else:
            found.append(f"{prefix}{key}: {_short(a)} there, {_short(b)} here")
    return found


def _short(value: Any, width: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"
