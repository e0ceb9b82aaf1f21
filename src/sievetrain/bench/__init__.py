"""Benchmarks: the method registry, the interleaved runner and the report."""

from sievetrain.bench.output import RESULTS, check_output
from sievetrain.bench.registry import (
    LEVELS,
    REGISTRY,
    Component,
    Method,
    RunSpec,
    parse_run,
    register,
)
from sievetrain.bench.report import markdown_table, plot_accuracy_vs_time, summarize, write_report
from sievetrain.bench.runner import run_bench, run_one
from sievetrain.bench.spec import Bench, prepare

__all__ = [
    "LEVELS",
    "REGISTRY",
    "RESULTS",
    "Bench",
    "Component",
    "Method",
    "RunSpec",
    "check_output",
    "markdown_table",
    "parse_run",
    "plot_accuracy_vs_time",
    "prepare",
    "register",
    "run_bench",
    "run_one",
    "summarize",
    "write_report",
]
