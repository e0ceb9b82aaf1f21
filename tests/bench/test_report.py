import json

import pytest

from sievetrain.bench.compare import (
    DISTURBED,
    matched_rows,
    matched_table,
    timing_disturbed,
)
from sievetrain.bench.report import REPORT_FILES, markdown_table, summarize, write_report

BASELINE = "full/budget=0.3"
MATCHED = {"baseline": BASELINE, "budget": 0.3, "source": "expected"}


def record(method, seed, accuracy, wall=10.0, cpu=20.0, *, matched=None, epochs=2):
    """A result record with the keys the report reads; ``cpu=None`` leaves out the
    CPU time, as records written before it was recorded do."""
    history = [
        {
            "epoch": e + 1,
            "test_accuracy": accuracy * (e + 1) / epochs,
            "train_time_s": wall * (e + 1) / epochs,
            "test_entropy": 0.5 / (e + 1),
        }
        for e in range(epochs)
    ]
    r = {
        "method": method,
        "seed": seed,
        "dataset": "mnist1d",
        "model": "mlp",
        "epochs": epochs,
        "train_size": 1000,
        "test_size": 200,
        "final_test_accuracy": accuracy,
        "final_test_entropy": history[-1]["test_entropy"],
        "train_time_s": wall,
        "time_breakdown_s": {"sampling": 0.01 * wall, "forward": 0.3 * wall},
        "samples_forwarded": 2000,
        "samples_backpropagated": 2000,
        "coverage": 1.0,
        "history": history,
        "config": {
            "train": {"batch_size": 128, "schedule": "step", "schedule_unit": "epoch"},
            "methods": {"sampler": {"method": method}},
        },
        "environment": {
            "sievetrain": "0.1.0",
            "git_sha": "abc",
            "python": "3.11",
            "torch": "2.x",
            "cpu": "test cpu",
            "torch_threads": 2,
            "cuda": None,
        },
        "matched": matched,
    }
    if cpu is not None:
        r["train_cpu_s"] = cpu
        r["cpu_breakdown_s"] = {"sampling": 0.01 * cpu, "forward": 0.3 * cpu}
    return r


def runs(method, walls, cpus):
    return [record(method, s, 0.8, w, c) for s, (w, c) in enumerate(zip(walls, cpus, strict=True))]


def matched_bench(method_acc, baseline_acc, full_acc=None):
    """Records of ``srs:0.3`` paired with its budget-matched baseline, seed by seed."""
    records = [record("full", s, a) for s, a in enumerate(full_acc or [])]
    records += [record(BASELINE, s, a) for s, a in enumerate(baseline_acc)]
    records += [record("srs:0.3", s, a, matched=MATCHED) for s, a in enumerate(method_acc)]
    return records


# Timing: when it cannot be trusted.


def test_clean_timing_with_small_jitter_is_not_flagged():
    assert timing_disturbed(runs("m", [10.0, 10.4, 9.7], [20.1, 20.6, 19.5])) is None


def test_a_3x_wall_time_outlier_with_the_same_cpu_time_is_flagged():
    reason = timing_disturbed(runs("m", [10.0, 10.2, 30.0], [20.0, 20.0, 20.0]))
    assert reason is not None
    assert "wall-time std" in reason and "seed 2: wall/CPU 1.50" in reason


def test_a_wall_cpu_ratio_outlier_alone_is_flagged():
    # Wall times agree within 3%, but seed 2 got a third less CPU over the same wall time.
    reason = timing_disturbed(runs("m", [10.0, 10.3, 10.1], [20.0, 20.5, 13.0]))
    assert reason is not None and "wall-time std" not in reason
    assert reason.startswith("seed 2: wall/CPU 0.78 vs 0.50")


def test_the_ratio_rule_is_relative_and_at_its_limit_quiet():
    assert timing_disturbed(runs("m", [10, 10, 10], [20, 20, 16.8])) is None  # 0.595 vs 0.5: 19%
    assert timing_disturbed(runs("m", [10, 10, 10], [20, 20, 16.4])) is not None  # 22%


def test_records_without_cpu_time_use_the_spread_rule_alone():
    assert timing_disturbed(runs("m", [10.0, 10.2, 9.9], [None] * 3)) is None
    assert "wall-time std" in timing_disturbed(runs("m", [10.0, 10.2, 30.0], [None] * 3))
    assert timing_disturbed(runs("m", [10.0], [None])) is None  # one seed: nothing to compare


def test_speed_up_cells_say_timing_disturbed_and_a_line_names_the_method():
    records = runs("full", [20.0, 20.4, 19.8], [40.0, 40.6, 39.8])
    records += runs("srs:0.3", [6.0, 6.1, 18.0], [12.0, 12.1, 12.0])
    records += runs("srs:0.5", [10.0, 10.1, 9.9], [20.0, 20.2, 19.9])
    rows, _ = summarize(records)
    by = {r["method"]: r for r in rows}
    assert by["srs:0.5"]["speedup"] == pytest.approx(2.0, rel=0.01)
    assert by["srs:0.5"]["cpu_speedup"] == pytest.approx(2.0, rel=0.01)
    assert by["srs:0.3"]["cpu_time_mean"] == pytest.approx(12.0333, rel=1e-3)
    assert not by["srs:0.3"]["timing_trusted"] and by["srs:0.5"]["timing_trusted"]
    table = markdown_table(rows)
    line = next(ln for ln in table.splitlines() if ln.startswith("| srs:0.3 |"))
    assert line.count(DISTURBED) == 2
    assert "| 2.01× | 2.00× |" in next(ln for ln in table.splitlines() if "| srs:0.5 |" in ln)
    notes = table.split("\n\n")[1].splitlines()
    assert len(notes) == 2 and notes[1].startswith("- `srs:0.3`: wall-time std")


def test_a_disturbed_baseline_disturbs_every_speed_up_but_names_only_itself():
    records = runs("full", [20.0, 20.4, 60.0], [40.0, 40.6, 40.0])
    records += runs("srs:0.5", [10.0, 10.1, 9.9], [20.0, 20.2, 19.9])
    table = markdown_table(summarize(records)[0])
    assert all(ln.count(DISTURBED) == 2 for ln in table.splitlines() if ln.startswith("| full"))
    assert all(ln.count(DISTURBED) == 2 for ln in table.splitlines() if ln.startswith("| srs"))
    assert "- `full`:" in table and "- `srs:0.5`" not in table


def test_old_records_without_cpu_time_show_a_dash_and_do_not_crash(tmp_path):
    records = runs("full", [20.0, 20.4], [None, None]) + runs("srs:0.5", [10.0, 10.1], [None, 9])
    rows, _ = summarize(records)
    assert all(r["cpu_time_mean"] is None and r["cpu_speedup"] is None for r in rows)
    line = next(ln for ln in markdown_table(rows).splitlines() if ln.startswith("| srs:0.5 |"))
    assert "| — | 2.01× | — |" in line
    for r in records:  # absent, or written as None
        r.pop("matched")
    assert write_report(tmp_path, records, command="sievetrain bench").startswith("| method |")


# The comparison at equal compute.


def test_paired_changes_mean_and_sample_std_by_hand():
    (row,) = matched_rows(matched_bench([0.80, 0.82, 0.84], [0.79, 0.80, 0.81], [0.80] * 3))
    assert row["seeds"] == [0, 1, 2]
    assert row["deltas"] == pytest.approx([1.0, 2.0, 3.0])
    assert row["delta_mean"] == pytest.approx(2.0) and row["delta_std"] == pytest.approx(1.0)
    assert row["exceeds_spread"] is True
    assert row["delta_vs_full"] == pytest.approx(2.0)
    assert (row["baseline"], row["budget"], row["budget_source"]) == (BASELINE, 0.3, "expected")
    assert row["verdict"] == "ahead of full data at equal compute"


def test_same_epochs_change_is_against_full_data_with_the_methods_optimizer():
    adam = {**MATCHED, "baseline": "full/budget=0.3+adam"}
    records = [record("full", s, 0.70) for s in range(2)]  # SGD: not this method's reference
    records += [record("full+adam", s, 0.76) for s in range(2)]
    records += [record("srs:0.3+adam", s, 0.74, matched=adam) for s in range(2)]
    records += [record("full/budget=0.3+adam", s, 0.73) for s in range(2)]
    (row,) = matched_rows(records)
    assert row["delta_vs_full"] == pytest.approx(-2.0)  # 74 - 76, not 74 - 70
    assert row["delta_mean"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "method_acc, verdict, exceeds",
    [
        ([0.78, 0.77, 0.76], "behind full data at equal compute", True),  # -2, -3, -4
        ([0.81, 0.79, 0.83], "no difference beyond the seeds' spread", False),  # +1, -1, +3
        ([0.80, 0.80, 0.80], "no difference beyond the seeds' spread", False),  # all equal
    ],
)
def test_verdicts(method_acc, verdict, exceeds):
    (row,) = matched_rows(matched_bench(method_acc, [0.80] * 3))
    assert row["exceeds_spread"] is exceeds and row["verdict"] == verdict
    assert row["delta_vs_full"] is None  # no plain full runs in this bench


def test_one_paired_seed_cannot_tell():
    (row,) = matched_rows(matched_bench([0.9], [0.8]))
    assert row["delta_mean"] == pytest.approx(10.0)
    assert row["delta_std"] is None and row["exceeds_spread"] is None
    assert row["verdict"] == "one seed: cannot tell"
    assert "| +10.00 ± — |" in matched_table([row])


def test_only_the_seeds_both_ran_are_paired():
    records = matched_bench([0.80, 0.83, 0.50], [0.79, 0.80])  # baseline lacks seed 2
    (row,) = matched_rows(records)
    assert row["seeds"] == [0, 1] and row["deltas"] == pytest.approx([1.0, 3.0])
    assert row["delta_std"] == pytest.approx(2**0.5)
    no_baseline = [r for r in records if r["method"] != BASELINE]
    (row,) = matched_rows(no_baseline)
    assert row["seeds"] == [] and row["delta_mean"] is None
    assert "| — |" in matched_table([row])  # and no crash


def test_an_unresolved_measured_match_is_read_from_a_resolved_seed_or_shown_as_missing():
    measured = {"baseline": BASELINE, "budget": 0.25, "source": "measured"}
    records = matched_bench([0.80, 0.82], [0.79, 0.80])
    records[2]["matched"] = {"baseline": None, "budget": None, "source": "measured"}
    records[3]["matched"] = measured
    (row,) = matched_rows(records)
    assert (row["baseline"], row["budget"], row["seeds"]) == (BASELINE, 0.25, [0, 1])
    (row,) = matched_rows(records[2:3])
    assert row["baseline"] is None and row["verdict"] == "no matched baseline run on these seeds"
    assert "| srs:0.3 | — (measured) | — | 0 | — |" in matched_table([row])


def test_methods_without_matched_have_no_row():
    records = matched_bench([0.8], [0.8], [0.8]) + [record("srs:0.5", 0, 0.8)]
    assert [r["method"] for r in matched_rows(records)] == ["srs:0.3"]


def test_matched_table_columns_and_cells():
    rows = matched_rows(matched_bench([0.80, 0.82, 0.84], [0.79, 0.80, 0.81], [0.80] * 3))
    header, _, line = matched_table(rows).splitlines()
    assert "budget F (source)" in header and "verdict" in header
    assert line == (
        f"| srs:0.3 | 0.3 (expected) | `{BASELINE}` | 3 | +2.00 ± 1.00 | +2.00 "
        "| ahead of full data at equal compute |"
    )


# write_report end to end.


def headings(text):
    return [ln for ln in text.splitlines() if ln.startswith("#")]


def test_report_without_matched_records_keeps_its_shape(tmp_path):
    records = runs("full", [20.0, 20.4], [40.0, 40.6]) + runs("srs:0.5", [10.0, 10.1], [20, 20])
    printed = write_report(tmp_path, records, command="sievetrain bench")
    assert printed.startswith("| method | seeds |") and "At equal compute" not in printed
    report = (tmp_path / "report.md").read_text()
    assert headings(report) == [
        "# sievetrain bench: mnist1d · mlp · 2 epochs",
        "## Test accuracy (%) by epoch",
        "## Normalized prediction entropy by epoch",
    ]
    assert printed in report
    cpu_plot = "accuracy_vs_cpu.png"  # written with a full-data sweep (--frontier) only
    assert all((tmp_path / name).exists() for name in REPORT_FILES if name != cpu_plot)
    assert not (tmp_path / cpu_plot).exists() and "Speed-up at equal accuracy" not in report
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["matched"] == [] and summary["baseline"] == "full"
    assert [r["method"] for r in summary["methods"]] == ["full", "srs:0.5"]


def test_report_leads_with_the_comparison_at_equal_compute(tmp_path):
    records = matched_bench([0.80, 0.82, 0.84], [0.79, 0.80, 0.81], [0.80] * 3)
    printed = write_report(tmp_path, records, command="sievetrain bench --matched")
    assert printed.startswith("## At equal compute\n")
    assert printed.index("| srs:0.3 | 0.3 (expected)") < printed.index("| method | seeds |")
    report = (tmp_path / "report.md").read_text()
    assert headings(report)[:3] == [
        "# sievetrain bench: mnist1d · mlp · 2 epochs",
        "## At equal compute",
        "## Every method",
    ]
    assert "paired by seed" in report and printed in report
    summary = json.loads((tmp_path / "summary.json").read_text())
    (row,) = summary["matched"]
    assert row["delta_mean"] == pytest.approx(2.0) and row["verdict"].startswith("ahead")
    assert REPORT_FILES[-1] == "summary.json" and REPORT_FILES[0] == "report.md"
